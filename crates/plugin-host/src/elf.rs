//! Checks an ELF shared library before it is handed to the dynamic loader.
//!
//! `dlopen` maps the file and trusts its headers: a truncated file (a copy
//! still being written, `cp` over a loaded plugin) is mapped past its end and
//! the first touch of the missing pages is a SIGBUS; a library for another
//! architecture fails with a cryptic message. So the private copy is read and
//! its headers checked first: the file must be a 64-bit little-endian ELF
//! shared object for this machine whose program headers, sections and section
//! table all lie within the file. Only a file that passes is ever mapped.
//!
//! Written here rather than taken from an ELF crate: the check needs a few
//! fixed header fields and bounds comparisons, nothing a parser adds, and it
//! must never map or trust what it reads.

use std::fs;
use std::path::Path;

const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_DYN: u16 = 3;
const SHT_NOBITS: u32 = 8;
const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;
/// More headers than any real plugin has; a corrupt count is refused early.
const MAX_HEADERS: usize = 65_535;

/// The `e_machine` of the architecture this host runs on.
pub(crate) fn host_machine() -> Option<(u16, &'static str)> {
    if cfg!(target_arch = "x86_64") {
        Some((62, "x86-64"))
    } else if cfg!(target_arch = "aarch64") {
        Some((183, "AArch64"))
    } else if cfg!(target_arch = "riscv64") {
        Some((243, "RISC-V"))
    } else {
        None
    }
}

fn machine_name(m: u16) -> String {
    match m {
        3 => "i386".into(),
        8 => "MIPS".into(),
        20 => "PowerPC".into(),
        21 => "PowerPC64".into(),
        40 => "ARM (32-bit)".into(),
        62 => "x86-64".into(),
        183 => "AArch64".into(),
        243 => "RISC-V".into(),
        other => format!("machine {other}"),
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap_or([0; 4]))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap_or([0; 8]))
}

/// Why the file is not a loadable shared library, or `Ok` when it is.
pub(crate) fn validate(path: &Path) -> Result<(), String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    validate_bytes(&bytes)
}

/// A table of `count` entries of `size` bytes at `off` lies within `len` bytes.
fn within(what: &str, off: u64, count: usize, size: usize, len: u64) -> Result<(), String> {
    let bytes = (count as u64).saturating_mul(size as u64);
    match off.checked_add(bytes) {
        Some(end) if end <= len => Ok(()),
        _ => Err(format!(
            "truncated or corrupt: the {what} ({bytes} bytes at offset {off}) end past the file's {len} bytes"
        )),
    }
}

pub(crate) fn validate_bytes(b: &[u8]) -> Result<(), String> {
    let len = b.len() as u64;
    if b.len() < 4 || b[..4] != *b"\x7fELF" {
        return Err("the file does not start with an ELF header".into());
    }
    if b.len() < EHDR_SIZE {
        return Err(format!(
            "truncated: {len} bytes is shorter than an ELF header"
        ));
    }
    if b[4] != ELFCLASS64 || b[5] != ELFDATA2LSB {
        return Err(format!(
            "not a 64-bit little-endian ELF file (class {}, data {}); build it for this machine",
            b[4], b[5]
        ));
    }
    let e_type = u16_at(b, 16);
    if e_type != ET_DYN {
        return Err(format!(
            "ELF type {e_type} is not a shared object; build it with `-shared -fPIC` (or as a cdylib)"
        ));
    }
    let machine = u16_at(b, 18);
    if let Some((want, name)) = host_machine() {
        if machine != want {
            return Err(format!(
                "built for {}, this host is {name}; rebuild it for this architecture",
                machine_name(machine)
            ));
        }
    }
    let phoff = u64_at(b, 32);
    let shoff = u64_at(b, 40);
    let phentsize = usize::from(u16_at(b, 54));
    let phnum = usize::from(u16_at(b, 56));
    let shentsize = usize::from(u16_at(b, 58));
    let shnum = usize::from(u16_at(b, 60));
    if phnum == 0 {
        return Err("no program headers: nothing the loader could map".into());
    }
    if phentsize < PHDR_SIZE || (shnum > 0 && shentsize < SHDR_SIZE) {
        return Err("corrupt: header entry sizes are too small".into());
    }
    if phnum > MAX_HEADERS || shnum > MAX_HEADERS {
        return Err("corrupt: implausible header counts".into());
    }
    within("program headers", phoff, phnum, phentsize, len)?;
    within("section headers", shoff, shnum, shentsize, len)?;
    for i in 0..phnum {
        let h = phoff as usize + i * phentsize;
        let (offset, filesz) = (u64_at(b, h + 8), u64_at(b, h + 32));
        if offset.checked_add(filesz).is_none_or(|end| end > len) {
            return Err(format!(
                "truncated or corrupt: segment {i} ({filesz} bytes at offset {offset}) ends past the file's {len} bytes"
            ));
        }
    }
    for i in 0..shnum {
        let h = shoff as usize + i * shentsize;
        let (kind, offset, size) = (u32_at(b, h + 4), u64_at(b, h + 24), u64_at(b, h + 32));
        if kind == SHT_NOBITS {
            continue;
        }
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(format!(
                "truncated or corrupt: section {i} ({size} bytes at offset {offset}) ends past the file's {len} bytes"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_binary() -> Vec<u8> {
        // The test executable is itself an ELF for this machine (PIE: ET_DYN
        // on every distribution this project targets), a realistic input.
        fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn a_real_object_passes_and_every_truncation_is_refused() {
        let b = this_binary();
        if u16_at(&b, 16) != ET_DYN {
            eprintln!("skipped: the test binary is not position-independent");
            return;
        }
        validate_bytes(&b).unwrap();
        for cut in [3, 40, 63, 64, 200, b.len() / 2, b.len() - 1] {
            let err = validate_bytes(&b[..cut]).unwrap_err();
            assert!(
                err.contains("truncated") || err.contains("ELF header"),
                "{cut}: {err}"
            );
        }
    }

    #[test]
    fn another_architecture_is_named() {
        let mut b = this_binary();
        if u16_at(&b, 16) != ET_DYN {
            return;
        }
        b[18..20].copy_from_slice(&40u16.to_le_bytes());
        let err = validate_bytes(&b).unwrap_err();
        assert!(err.contains("built for ARM (32-bit)"), "{err}");
        b[4] = 1;
        assert!(validate_bytes(&b).unwrap_err().contains("64-bit"));
    }
}
