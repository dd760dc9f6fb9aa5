//! Layer unpacking: diff_ids, path escapes refused, no writes through symlinks, whiteouts.
//! The whiteout test needs root (mknod, trusted.* xattrs); it fails under CI=true without it.

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use agent::image::unpack_layer;
use support::E;

fn unpack(tar: &[u8], gz: bool) -> (tempfile::TempDir, agent::image::Result<String>) {
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    std::fs::write(&blob, if gz { support::gzip(tar) } else { tar.to_vec() }).unwrap();
    let dest = dir.path().join("layer");
    std::fs::create_dir(&dest).unwrap();
    let res = unpack_layer(&blob, &dest, "sha256:test");
    (dir, res)
}

/// A tar entry with a raw (unchecked) path or link name.
fn raw_entry(path: &str, ty: tar::EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_entry_type(ty);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    if let Some(l) = link {
        h.set_link_name_literal(l).unwrap();
    }
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    // Drop each part's end-of-archive blocks except the last one's.
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let body = if i + 1 < parts.len() {
            &p[..p.len() - 1024]
        } else {
            &p[..]
        };
        out.extend_from_slice(body);
    }
    out
}

#[test]
fn diff_id_is_sha256_of_the_tar_gzip_or_not() {
    let tar = concat(&[
        support::tar(&[
            E::Dir("a/"),
            E::File("a/f", b"data", 0o640),
            E::Symlink("a/s", "/etc/passwd"),
            E::Hardlink("a/h", "a/f"),
            E::File("./dot/h", b"h", 0o644),
        ]),
        raw_entry("/abs/g", tar::EntryType::Regular, None, b"g"),
    ]);
    for gz in [false, true] {
        let (dir, res) = unpack(&tar, gz);
        assert_eq!(res.unwrap(), support::sha256(&tar));
        let l = dir.path().join("layer");
        assert_eq!(std::fs::read(l.join("a/f")).unwrap(), b"data");
        assert_eq!(
            std::fs::metadata(l.join("a/f")).unwrap().mode() & 0o7777,
            0o640
        );
        assert_eq!(
            std::fs::read_link(l.join("a/s")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            std::fs::metadata(l.join("a/h")).unwrap().ino(),
            std::fs::metadata(l.join("a/f")).unwrap().ino()
        );
        assert!(l.join("abs/g").exists() && l.join("dot/h").exists());
    }
}

#[test]
fn dotdot_paths_are_refused() {
    let outside = tempfile::tempdir().unwrap();
    let (dir, res) = unpack(
        &raw_entry("../evil", tar::EntryType::Regular, None, b"x"),
        false,
    );
    let msg = res.unwrap_err().to_string();
    assert!(
        msg.contains("escapes") && msg.contains("sha256:test"),
        "{msg}"
    );
    assert!(!dir.path().join("evil").exists());

    let (_d, res) = unpack(
        &raw_entry("a/../../evil", tar::EntryType::Regular, None, b"x"),
        false,
    );
    assert!(res.unwrap_err().to_string().contains("escapes"));

    let target = format!("../../../../../../..{}/x", outside.path().display());
    let (_d, res) = unpack(
        &raw_entry("h", tar::EntryType::Link, Some(&target), b""),
        false,
    );
    assert!(
        res.unwrap_err()
            .to_string()
            .contains("hard link target escapes")
    );
}

#[test]
fn never_writes_through_symlinks() {
    let outside = tempfile::tempdir().unwrap();
    let o = outside.path().display().to_string();
    std::fs::write(outside.path().join("secret"), b"s").unwrap();
    // A symlinked directory, then a file below it.
    let tar = support::tar(&[E::Symlink("link", &o), E::File("link/pwned", b"x", 0o644)]);
    let (_d, res) = unpack(&tar, false);
    let msg = res.unwrap_err().to_string();
    assert!(msg.contains("refusing to write through a symlink"), "{msg}");
    assert!(!outside.path().join("pwned").exists());
    // A symlink replaced by a file: the file replaces the link, the target is untouched.
    let tar = support::tar(&[
        E::Symlink("f", &format!("{o}/secret")),
        E::File("f", b"new", 0o644),
    ]);
    let (d, res) = unpack(&tar, false);
    res.unwrap();
    assert_eq!(std::fs::read(d.path().join("layer/f")).unwrap(), b"new");
    assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"s");
    // A hard link through a symlinked directory.
    let link = concat(&[
        support::tar(&[E::Symlink("s", &o)]),
        raw_entry("h", tar::EntryType::Link, Some("s/secret"), b""),
    ]);
    let (_d, res) = unpack(&link, false);
    assert!(
        res.unwrap_err()
            .to_string()
            .contains("not inside the layer")
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for junk in [
        &b"not a tar at all, just some text that is long enough"[..],
        &[0x1f, 0x8b, 1, 2, 3][..],
        &[0x28, 0xb5, 0x2f, 0xfd, 0][..],
    ] {
        let (_d, res) = unpack(junk, false);
        assert!(res.is_err(), "{junk:?} unpacked");
    }
}

#[test]
fn whiteouts_become_overlayfs_whiteouts() {
    if !support::require(
        "whiteouts_become_overlayfs_whiteouts",
        "root (mknod, trusted.* xattrs)",
        support::is_root(),
    ) {
        return;
    }
    let tar = support::tar(&[
        E::Dir("etc/"),
        E::File("etc/.wh.gone", b"", 0o644),
        E::Dir("opaque/"),
        E::File("opaque/.wh..wh..opq", b"", 0o644),
        E::File("opaque/new", b"new", 0o644),
        E::File("deep/er/.wh.x", b"", 0o644),
        E::File(".wh..wh.plnk", b"", 0o644),
    ]);
    let (dir, res) = unpack(&tar, true);
    res.unwrap();
    let l = dir.path().join("layer");
    let gone = std::fs::symlink_metadata(l.join("etc/gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert!(!l.join("etc/.wh.gone").exists() && !l.join(".wh..wh.plnk").exists());
    assert!(
        std::fs::symlink_metadata(l.join("deep/er/x"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(
        xattr(&l.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(support::tree(&l.join("opaque")), ["new"]);
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and buffer.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (rc >= 0).then(|| buf[..rc as usize].to_vec())
}
