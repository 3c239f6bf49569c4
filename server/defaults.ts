/** Defaults shared by the server's commands, kept apart so that the CLI can read them without loading the modules that use them. */

/** Default address of the dashboard: localhost only. */
export const DEFAULT_LISTEN = '127.0.0.1:8080';
