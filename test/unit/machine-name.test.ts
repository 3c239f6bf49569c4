import { describe, expect, it } from 'vitest';
import { MACHINE_NAME, NETBIOS_MAX, netbiosCollisions, netbiosName } from '../../protocol/machine-name.js';

describe('machine names and their Windows computer names', () => {
  it('gives the NetBIOS form: 15 characters at most, upper case, "." and "_" as "-"', () => {
    expect(netbiosName('pc-12')).toBe('PC-12');
    expect(netbiosName('physics-lab-pc-12')).toBe('PHYSICS-LAB-PC-');
    expect(netbiosName('room_101.pc3')).toBe('ROOM-101-PC3');
    for (const n of ['a', 'x'.repeat(64), 'a.b_c-d']) {
      expect(netbiosName(n).length).toBeLessThanOrEqual(NETBIOS_MAX);
      expect(netbiosName(n)).toMatch(/^[A-Z0-9-]+$/);
    }
  });

  it('finds names that would collide once cut to 15 characters (a room of chemistry-lab-01..09)', () => {
    const room = Array.from({ length: 9 }, (_, i) => `chemistry-lab-0${i + 1}`);
    expect(netbiosCollisions(room)).toEqual([room]);
    expect(netbiosCollisions(['lab-1', 'lab-2', 'lab_1', 'LAB.1'])).toEqual([['lab-1', 'lab_1', 'LAB.1']]);
    expect(netbiosCollisions(['pc-01', 'pc-02'])).toEqual([]);
    expect(netbiosCollisions(['pc-01', 'pc-01'])).toEqual([]); // the same machine named twice is one name
  });

  it('accepts the registry names and nothing else', () => {
    for (const ok of ['pc-12', 'a', 'x'.repeat(64), 'room_101.pc3']) expect(MACHINE_NAME.test(ok)).toBe(true);
    for (const bad of ['', 'x'.repeat(65), 'a b', 'pc;reboot', 'pc\n', 'ü']) expect(MACHINE_NAME.test(bad)).toBe(false);
  });
});
