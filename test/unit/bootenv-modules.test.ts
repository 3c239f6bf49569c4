import { beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cachedKernelPackage } from '../../pxe/bootenv.js';
import { copyModules, moduleDepends, moduleIndex, NAMED_DRIVERS, type ModuleSet } from '../../pxe/bootenv-modules.js';
import { productionPackages } from '../../pxe/bootenv-pack.js';
import { copyFirmware } from '../../pxe/bootenv-firmware.js';
import { itNeeds, missing, ROOT, tempDir } from '../helpers.js';

describe('boot environment kernel modules', () => {
  const dir = tempDir('modules');
  const root = join(dir, 'root');
  let version = '';
  let set: ModuleSet;
  beforeAll(() => {
    if (missing(['kernel']).length > 0 || !existsSync('/bin/busybox')) return;
    execFileSync('dpkg-deb', ['-x', cachedKernelPackage()!, join(dir, 'x')]);
    version = readdirSync(join(dir, 'x', 'lib', 'modules'))[0];
    set = copyModules(join(dir, 'x'), root, version);
  }, 120_000);

  itNeeds(['kernel'], 'carries the named network and disk drivers and every module they depend on', () => {
    const names = new Set(set.names);
    for (const d of NAMED_DRIVERS) expect(names.has(d), d).toBe(true);
    // Dependencies, read again from the copied files: none missing (nor built in).
    const builtin = readFileSync(join(root, 'lib', 'modules', version, 'modules.builtin'), 'utf8');
    const index = moduleIndex(join(root, 'lib', 'modules', version, 'kernel'));
    for (const [name, rel] of index) {
      for (const dep of moduleDepends(join(root, 'lib', 'modules', version, 'kernel', rel))) {
        expect(index.has(dep) || builtin.includes(`/${dep}.ko`) || builtin.includes(`/${dep.replace(/_/g, '-')}.ko`), `${name} needs ${dep}`).toBe(true);
      }
    }
    // e1000e needs nothing, nvme needs nvme_core, r8152 the MII library, mpt3sas the SAS transport.
    expect(moduleDepends(join(root, 'lib', 'modules', version, 'kernel', index.get('nvme')!))).toContain('nvme_core');
    expect(names.has('nvme_core') && names.has('scsi_transport_sas') && names.has('usbnet') && names.has('libata')).toBe(true);
    // Every driver, not a list: hundreds of modules, yet no wireless, no Fibre Channel.
    expect(set.names.length).toBeGreaterThan(300);
    expect(names.has('iwlwifi') || names.has('lpfc') || names.has('qla2xxx')).toBe(false);
  });

  itNeeds(['kernel'], 'writes modules.alias and modules.dep so that busybox modprobe loads a device\'s driver by its modalias', () => {
    const dir_ = join(root, 'lib', 'modules', version);
    const alias = readFileSync(join(dir_, 'modules.alias'), 'utf8');
    // Intel 82574L (qemu's e1000e), an NVMe class match, Realtek's RTL8153 USB adapter, VMD, a virtio-net device.
    expect(alias).toMatch(/^alias pci:v00008086d000010D3sv\*sd\*bc\*sc\*i\* e1000e$/m);
    expect(alias).toMatch(/^alias pci:v\*d\*sv\*sd\*bc01sc08i02\* nvme$/m);
    expect(alias).toMatch(/^alias usb:v0BDAp8153d\S* r8152$/m);
    expect(alias).toMatch(/ vmd$/m);
    expect(alias).toMatch(/^alias virtio:d00000001v\* virtio_net$/m);
    const dep = readFileSync(join(dir_, 'modules.dep'), 'utf8');
    expect(dep).toMatch(/^kernel\/drivers\/nvme\/host\/nvme\.ko: .*nvme-core\.ko/m);
  });
});

describe('boot environment firmware', () => {
  it('copies the firmware files a module names from /lib/firmware, and never a path out of it', () => {
    const d = tempDir('firmware');
    mkdirSync(join(d, 'fw', 'isci'), { recursive: true });
    writeFileSync(join(d, 'fw', 'isci', 'isci_firmware.bin'), 'blob');
    writeFileSync(join(d, 'secret'), 'not firmware');
    const ko = join(d, 'isci.ko');
    writeFileSync(ko, Buffer.from('\0license=GPL\0firmware=isci/isci_firmware.bin\0firmware=../secret\0firmware=rtl_nic/rtl8168h-2.fw\0'));
    const set = copyFirmware(new Map([['isci', ko]]), join(d, 'root'), join(d, 'fw'));
    expect(set.copied).toEqual(['isci/isci_firmware.bin']);
    expect(readFileSync(join(d, 'root', 'lib', 'firmware', 'isci', 'isci_firmware.bin'), 'utf8')).toBe('blob');
    expect(existsSync(join(d, 'root', 'lib', 'secret'))).toBe(false);
    expect(set.missing.get('isci')).toEqual(['rtl_nic/rtl8168h-2.fw']);
  });
});

describe('boot environment npm packages', () => {
  it('takes the production dependency closure, never the development tools', () => {
    const pkgs = productionPackages(ROOT);
    expect(pkgs).toContain(join('node_modules', 'ws'));
    expect(pkgs).toContain(join('node_modules', 'protobufjs'));
    expect(pkgs.some((p) => /vitest|typescript|playwright|rolldown|jsdoc/.test(p))).toBe(false);
  });
});
