//! A reproducible cpio "newc" archive writer (and a reader to check it).
//!
//! The kernel unpacks an initramfs in archive order and does not create
//! missing parents, so entries are written sorted by path: a directory's
//! name is a prefix of its children's and therefore sorts first. Every
//! header carries uid/gid 0, mtime [`MTIME`], explicit modes and inode
//! numbers counted from 1, so the bytes depend only on the entries.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context};

/// The mtime of every entry (the epoch): nothing in the guest cares, and a
/// fixed value keeps the archive reproducible.
pub const MTIME: u32 = 0;

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// One archive member: permission bits only in `mode` (the type comes from
/// `kind`), owner always root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub kind: Kind,
}

/// The archive's content: relative paths (`bin/busybox`, no leading `/`)
/// to entries. A map, so the order entries were added in cannot matter.
pub type Tree = BTreeMap<String, Entry>;

/// Writes `tree` as a newc archive, trailer included.
pub fn write(tree: &Tree, out: &mut impl Write) -> anyhow::Result<()> {
    // Inode numbers only need to be distinct; counting keeps them stable.
    for (ino, (path, entry)) in (1u32..).zip(tree) {
        check_path(path)?;
        let (type_bits, data, rdev): (u32, &[u8], (u32, u32)) = match &entry.kind {
            Kind::Dir => (S_IFDIR, &[], (0, 0)),
            Kind::File(data) => (S_IFREG, data, (0, 0)),
            Kind::Symlink(target) => (S_IFLNK, target.as_bytes(), (0, 0)),
            Kind::CharDevice { major, minor } => (S_IFCHR, &[], (*major, *minor)),
        };
        let nlink = if matches!(entry.kind, Kind::Dir) {
            2
        } else {
            1
        };
        let header = Header {
            ino,
            mode: type_bits | (entry.mode & 0o7777),
            nlink,
            filesize: u32::try_from(data.len())
                .with_context(|| format!("{path} is too large for cpio"))?,
            rdevmajor: rdev.0,
            rdevminor: rdev.1,
        };
        write_member(out, &header, path, data)?;
    }
    let trailer = Header {
        ino: 0,
        mode: 0,
        nlink: 1,
        filesize: 0,
        rdevmajor: 0,
        rdevminor: 0,
    };
    write_member(out, &trailer, TRAILER, &[])?;
    Ok(())
}

/// Reads a newc archive back into a tree (checks what [`write`] produced).
pub fn read(mut data: &[u8]) -> anyhow::Result<Tree> {
    let mut tree = Tree::new();
    let mut offset = 0usize;
    loop {
        if data.len() < HEADER_LEN {
            bail!("truncated cpio header at offset {offset}");
        }
        if &data[..6] != MAGIC {
            bail!("bad cpio magic at offset {offset}");
        }
        let field = |i: usize| -> anyhow::Result<u32> {
            let start = 6 + i * 8;
            let text = std::str::from_utf8(&data[start..start + 8])?;
            u32::from_str_radix(text, 16)
                .with_context(|| format!("bad cpio header field {i} at offset {offset}"))
        };
        let mode = field(1)?;
        let filesize = field(6)? as usize;
        let (rdevmajor, rdevminor) = (field(9)?, field(10)?);
        let namesize = field(11)? as usize;
        let name_end = HEADER_LEN + namesize;
        let data_start = pad4(name_end);
        let data_end = data_start + filesize;
        if data.len() < data_end || namesize == 0 {
            bail!("truncated cpio member at offset {offset}");
        }
        let name = std::str::from_utf8(&data[HEADER_LEN..name_end - 1])
            .with_context(|| format!("non-UTF-8 name at offset {offset}"))?
            .to_string();
        if name == TRAILER {
            return Ok(tree);
        }
        let body = &data[data_start..data_end];
        let kind = match mode & 0o170000 {
            S_IFDIR => Kind::Dir,
            S_IFREG => Kind::File(body.to_vec()),
            S_IFLNK => Kind::Symlink(String::from_utf8(body.to_vec())?),
            S_IFCHR => Kind::CharDevice {
                major: rdevmajor,
                minor: rdevminor,
            },
            other => bail!("{name}: unsupported file type {other:o}"),
        };
        if tree
            .insert(
                name.clone(),
                Entry {
                    mode: mode & 0o7777,
                    kind,
                },
            )
            .is_some()
        {
            bail!("{name} appears twice");
        }
        let next = pad4(data_end);
        offset += next.min(data.len());
        data = &data[next.min(data.len())..];
    }
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
}

fn write_member(out: &mut impl Write, h: &Header, name: &str, data: &[u8]) -> anyhow::Result<()> {
    let namesize = name.len() + 1;
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
    // rdevminor namesize check: thirteen 8-digit hex fields.
    let fields = [
        h.ino,
        h.mode,
        0,
        0,
        h.nlink,
        MTIME,
        h.filesize,
        0,
        0,
        h.rdevmajor,
        h.rdevminor,
        namesize as u32,
        0,
    ];
    let mut header = Vec::with_capacity(HEADER_LEN + namesize + 3);
    header.extend_from_slice(MAGIC);
    for f in fields {
        header.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    header.extend_from_slice(name.as_bytes());
    header.push(0);
    header.resize(pad4(HEADER_LEN + namesize), 0);
    out.write_all(&header)?;
    out.write_all(data)?;
    let padded = pad4(data.len());
    out.write_all(&[0u8; 3][..padded - data.len()])?;
    Ok(())
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Archive paths are relative, normalised and free of NUL.
fn check_path(path: &str) -> anyhow::Result<()> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.ends_with('/')
        || path.contains('\0')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        bail!("invalid archive path {path:?}: want a relative path like bin/busybox");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tree {
        let mut t = Tree::new();
        t.insert(
            "bin".into(),
            Entry {
                mode: 0o755,
                kind: Kind::Dir,
            },
        );
        t.insert(
            "bin/busybox".into(),
            Entry {
                mode: 0o755,
                kind: Kind::File(b"\x7fELF..".to_vec()),
            },
        );
        t.insert(
            "bin/sh".into(),
            Entry {
                mode: 0o777,
                kind: Kind::Symlink("busybox".into()),
            },
        );
        t.insert(
            "dev".into(),
            Entry {
                mode: 0o755,
                kind: Kind::Dir,
            },
        );
        t.insert(
            "dev/console".into(),
            Entry {
                mode: 0o600,
                kind: Kind::CharDevice { major: 5, minor: 1 },
            },
        );
        t.insert(
            "root".into(),
            Entry {
                mode: 0o700,
                kind: Kind::Dir,
            },
        );
        t.insert(
            "empty".into(),
            Entry {
                mode: 0o644,
                kind: Kind::File(Vec::new()),
            },
        );
        t.insert(
            "a-b".into(),
            Entry {
                mode: 0o644,
                kind: Kind::File(b"xyz".to_vec()),
            },
        );
        t
    }

    #[test]
    fn round_trip() {
        let tree = sample();
        let mut bytes = Vec::new();
        write(&tree, &mut bytes).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(read(&bytes).unwrap(), tree);
    }

    #[test]
    fn parents_come_before_children_and_order_is_by_path() {
        let mut bytes = Vec::new();
        write(&sample(), &mut bytes).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let pos = |n: &str| text.find(&format!("{n}\0")).unwrap();
        assert!(pos("bin") < pos("bin/busybox"));
        assert!(pos("bin/busybox") < pos("bin/sh"));
        assert!(pos("a-b") < pos("bin"));
        assert!(pos("root") < pos("TRAILER!!!"));
    }

    #[test]
    fn header_fields_are_fixed() {
        let mut t = Tree::new();
        t.insert(
            "f".into(),
            Entry {
                mode: 0o600,
                kind: Kind::File(b"hi".to_vec()),
            },
        );
        let mut bytes = Vec::new();
        write(&t, &mut bytes).unwrap();
        let header = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        // magic, ino 1, regular 0600, uid 0, gid 0, nlink 1, mtime 0, size 2.
        assert_eq!(
            &header[..62],
            "07070100000001000081800000000000000000000000010000000000000002"
        );
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 2], b"f\0");
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in ["/abs", "a//b", "a/../b", "dir/", ""] {
            let mut t = Tree::new();
            t.insert(
                p.into(),
                Entry {
                    mode: 0o755,
                    kind: Kind::Dir,
                },
            );
            assert!(write(&t, &mut Vec::new()).is_err(), "{p:?} accepted");
        }
    }

    /// A cross-check against GNU cpio.
    #[test]
    #[ignore = "needs GNU cpio (cargo xtask deps installs it): run by cargo xtask test"]
    fn system_cpio_lists_what_we_wrote() {
        crate::testing::program("cpio");
        let mut bytes = Vec::new();
        write(&sample(), &mut bytes).unwrap();
        let out = crate::process::cmd("cpio")
            .args(["-t", "--quiet"])
            .stdin_bytes(bytes)
            .run(
                std::time::Duration::from_secs(60),
                crate::process::Io::quiet(),
            )
            .unwrap();
        assert!(out.success());
        let listed: Vec<String> = out.stdout_text().lines().map(String::from).collect();
        let want: Vec<String> = sample().keys().cloned().collect();
        assert_eq!(listed, want);
    }
}
