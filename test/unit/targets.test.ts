import { describe, expect, it } from 'vitest';
import { chooseDisk } from '../../server/targets.js';
import type { DiskInfo } from '../../protocol/control.js';

const GiB = 2 ** 30;
const disk = (device: string, size: number, extra: Partial<DiskInfo> = {}): DiskInfo => ({ device, size, logicalSector: 512, physicalSector: 512, removable: false, mounted: false, boot: false, ...extra });

describe('choosing the target disk', () => {
  it('auto takes the single non-removable disk that is not the boot medium', () => {
    const disks = [disk('/dev/sda', 64 * GiB), disk('/dev/sdb', 16 * GiB, { removable: true }), disk('/dev/sdc', 8 * GiB, { boot: true })];
    expect(chooseDisk(disks, 'auto', 10 * GiB)).toEqual({ device: '/dev/sda' });
  });

  it('auto refuses when two disks could be the target, naming them', () => {
    const r = chooseDisk([disk('/dev/sda', 64 * GiB), disk('/dev/nvme0n1', 64 * GiB)], 'auto', GiB);
    expect(r).toEqual({ error: expect.stringMatching(/more than one disk could be the target \(\/dev\/sda, \/dev\/nvme0n1\); deploy with --target DEVICE/) });
  });

  it('auto refuses when only removable or boot disks exist', () => {
    expect(chooseDisk([disk('/dev/sdb', 16 * GiB, { removable: true })], 'auto', GiB)).toMatchObject({ error: expect.stringMatching(/no disk to write/) });
    expect(chooseDisk([], 'auto', GiB)).toMatchObject({ error: expect.stringMatching(/no disks reported/) });
  });

  it('a named disk must exist, not be the boot disk, and not be mounted', () => {
    const disks = [disk('/dev/sda', 64 * GiB, { mounted: true }), disk('/dev/sdc', 8 * GiB, { boot: true })];
    expect(chooseDisk(disks, '/dev/sdx', GiB)).toMatchObject({ error: expect.stringMatching(/it has no disk \/dev\/sdx \(it has \/dev\/sda, \/dev\/sdc\)/) });
    expect(chooseDisk(disks, '/dev/sdc', GiB)).toMatchObject({ error: expect.stringMatching(/booted from/) });
    expect(chooseDisk(disks, '/dev/sda', GiB)).toMatchObject({ error: expect.stringMatching(/in use .*unmount it/) });
  });

  it('an image larger than the disk is refused with both sizes', () => {
    expect(chooseDisk([disk('/dev/sda', 8 * GiB)], 'auto', 8 * GiB + 512)).toEqual({
      error: 'the image needs 8.0 GiB (8589935104 bytes) but /dev/sda holds 8.0 GiB (8589934592 bytes); use a larger disk or a smaller image',
    });
    expect(chooseDisk([disk('/dev/sda', 8 * GiB)], 'auto', 8 * GiB)).toEqual({ device: '/dev/sda' });
  });
});
