/**
 * The dashboard's files beyond index.html, dashboard.js and dashboard.css:
 * its view modules (server/dashboard/) and the charting library uPlot,
 * served from the installed npm package (no CDN: the page's CSP allows
 * scripts and styles from this server only).
 */
import { join } from 'node:path';
import { projectRoot } from '../native/addon.js';

const JS = 'text/javascript; charset=utf-8';
const CSS = 'text/css; charset=utf-8';

/** Path on the server -> file (relative to server/dashboard/, or to the project when it starts with node_modules/). */
export const DASHBOARD_FILES: Record<string, { file: string; type: string }> = Object.freeze({
  '/ui.js': { file: 'ui.js', type: JS },
  '/machines.js': { file: 'machines.js', type: JS },
  '/forms.js': { file: 'forms.js', type: JS },
  '/images.js': { file: 'images.js', type: JS },
  '/session-view.js': { file: 'session-view.js', type: JS },
  '/uplot.js': { file: 'node_modules/uplot/dist/uPlot.iife.min.js', type: JS },
  '/uplot.css': { file: 'node_modules/uplot/dist/uPlot.min.css', type: CSS },
});

/** Where a dashboard file is on disk. */
export function dashboardFile(file: string): string {
  return file.startsWith('node_modules/') ? join(projectRoot(), file) : join(projectRoot(), 'server', 'dashboard', file);
}
