//! Unpacking one layer tar (plain or gzip) into its own directory, used as an overlayfs lowerdir.
//!
//! Whiteouts become what overlayfs understands: `.wh.NAME` a character device 0:0 named NAME,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory. Paths with `..` are
//! refused, and nothing is ever written through a symlink (parents must be real directories).

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};

use super::{ImageError, Result, io_err};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Unpacks the layer blob at `blob` into the empty directory `dest` and returns the layer's
/// diff_id (sha256 of the uncompressed tar). `label` names the layer in errors.
pub fn unpack_layer(blob: &Path, dest: &Path, label: &str) -> Result<String> {
    let err = |reason: String| ImageError::Layer {
        digest: label.to_string(),
        reason,
    };
    let file = fs::File::open(blob).map_err(io_err("opening", blob))?;
    let mut buf = BufReader::with_capacity(256 * 1024, file);
    let magic = buf.fill_buf().map_err(io_err("reading", blob))?;
    let reader: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(buf))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(err("zstd-compressed layers are not supported".to_string()));
    } else {
        Box::new(buf)
    };
    let mut hashing = HashingReader {
        inner: reader,
        hasher: Sha256::new(),
    };
    let root = geteuid_is_root();
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive
            .entries()
            .map_err(|e| err(format!("reading tar: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| err(format!("reading tar: {e}")))?;
            unpack_entry(&mut entry, dest, root, &mut dirs).map_err(|e| match e {
                ImageError::Io {
                    context,
                    path,
                    source,
                } => err(format!(
                    "{context} {}: {source}",
                    path.strip_prefix(dest).unwrap_or(&path).display()
                )),
                ImageError::Layer { reason, .. } => err(reason),
                other => other,
            })?;
        }
    }
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| err(format!("reading tar: {e}")))?;
    // Directory modes and times last: children changed the times, and a read-only mode would
    // have stopped non-root writes.
    for (path, mode, mtime) in dirs.iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            .map_err(io_err("chmod", path))?;
        set_mtime(path, *mtime);
    }
    Ok(format!("sha256:{}", hex::encode(hashing.hasher.finalize())))
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    root: bool,
    dirs: &mut Vec<(PathBuf, u32, u64)>,
) -> Result<()> {
    let raw = entry
        .path()
        .map_err(io_err("reading path of", dest))?
        .into_owned();
    let label = raw.display().to_string();
    let refuse = |reason: &str| ImageError::Layer {
        digest: String::new(),
        reason: format!("entry {label:?}: {reason}"),
    };
    let Some(rel) = clean(&raw) else {
        return Err(refuse("path escapes the layer (contains ..)"));
    };
    let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(()); // the layer root itself
    };
    let parent = ensure_parents(dest, rel.parent().unwrap_or(Path::new("")))?;
    let target = parent.join(rel.file_name().unwrap_or_default());

    if name == OPAQUE_MARKER {
        return set_xattr(&parent, "trusted.overlay.opaque", b"y")
            .map_err(io_err("marking opaque", parent.clone()));
    }
    if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.starts_with(WHITEOUT_PREFIX) || hidden.is_empty() {
            return Ok(()); // other aufs metadata
        }
        let path = parent.join(hidden);
        remove_existing(&path, false)?;
        return mknod(&path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| io_err("creating whiteout", path.clone())(io::Error::from(e)));
    }

    let header = entry.header();
    let kind = header.entry_type();
    let mode = header.mode().unwrap_or(0o644) & 0o7777;
    let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
    let mtime = header.mtime().unwrap_or(0);
    let is_dir = kind.is_dir();
    remove_existing(&target, is_dir)?;
    match kind {
        tar::EntryType::Directory => {
            if fs::symlink_metadata(&target).is_err() {
                fs::create_dir(&target).map_err(io_err("creating directory", target.clone()))?;
            }
            dirs.push((target.clone(), mode, mtime));
        }
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)
                .map_err(io_err("creating", target.clone()))?;
            io::copy(entry, &mut f).map_err(io_err("writing", target.clone()))?;
        }
        tar::EntryType::Symlink => {
            let link = entry
                .link_name()
                .ok()
                .flatten()
                .ok_or_else(|| refuse("symlink without target"))?;
            std::os::unix::fs::symlink(&link, &target)
                .map_err(io_err("creating symlink", target.clone()))?;
        }
        tar::EntryType::Link => {
            let link = entry
                .link_name()
                .ok()
                .flatten()
                .ok_or_else(|| refuse("hard link without target"))?;
            let src_rel =
                clean(&link).ok_or_else(|| refuse("hard link target escapes the layer"))?;
            let src_parent = ensure_existing_dirs(dest, src_rel.parent().unwrap_or(Path::new("")))
                .ok_or_else(|| refuse("hard link target is not inside the layer"))?;
            let src = src_parent.join(src_rel.file_name().unwrap_or_default());
            match fs::symlink_metadata(&src) {
                Ok(m) if !m.is_dir() => {}
                _ => return Err(refuse("hard link target missing or a directory")),
            }
            fs::hard_link(&src, &target).map_err(io_err("creating hard link", target.clone()))?;
            return Ok(()); // shares the target's metadata
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let (ty, dev) = match kind {
                tar::EntryType::Char => (SFlag::S_IFCHR, dev_of(header)),
                tar::EntryType::Block => (SFlag::S_IFBLK, dev_of(header)),
                _ => (SFlag::S_IFIFO, 0),
            };
            mknod(&target, ty, Mode::from_bits_truncate(mode), dev)
                .map_err(|e| io_err("creating device", target.clone())(io::Error::from(e)))?;
        }
        _ => {
            tracing::debug!(entry = %label, ?kind, "skipping unsupported tar entry type");
            return Ok(());
        }
    }
    if root {
        std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32))
            .map_err(io_err("chown", target.clone()))?;
    }
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            if let (Ok(key), value) = (ext.key(), ext.value_bytes())
                && let Some(attr) = key.strip_prefix("SCHILY.xattr.")
                && let Err(e) = set_xattr(&target, attr, value)
            {
                tracing::debug!(entry = %label, attr, error = %e, "cannot set xattr");
            }
        }
    }
    if !is_dir && kind != tar::EntryType::Symlink {
        // After chown, which clears setuid bits.
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", target.clone()))?;
    }
    if !is_dir {
        set_mtime(&target, mtime);
    }
    Ok(())
}

/// Normalises an entry path to a relative one; `None` if it contains `..`.
fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Creates the parents of an entry as real directories; refuses symlinks or files on the way.
fn ensure_parents(dest: &Path, rel_parent: &Path) -> Result<PathBuf> {
    let mut p = dest.to_path_buf();
    for c in rel_parent.components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ImageError::Layer {
                    digest: String::new(),
                    reason: format!(
                        "{} is not a directory (refusing to write through a symlink)",
                        rel_parent.display()
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&p).map_err(io_err("creating directory", p.clone()))?;
            }
            Err(e) => return Err(io_err("inspecting", p)(e)),
        }
    }
    Ok(p)
}

/// Like [`ensure_parents`] but only checks; `None` unless every component is a real directory.
fn ensure_existing_dirs(dest: &Path, rel: &Path) -> Option<PathBuf> {
    let mut p = dest.to_path_buf();
    for c in rel.components() {
        p.push(c);
        if !fs::symlink_metadata(&p).ok()?.is_dir() {
            return None;
        }
    }
    Some(p)
}

/// Removes whatever is at `path` unless both it and the new entry are directories.
fn remove_existing(path: &Path, new_is_dir: bool) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && new_is_dir => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("replacing", path)),
        Ok(_) => fs::remove_file(path).map_err(io_err("replacing", path)),
        Err(_) => Ok(()),
    }
}

fn dev_of(h: &tar::Header) -> u64 {
    let major = h.device_major().ok().flatten().unwrap_or(0);
    let minor = h.device_minor().ok().flatten().unwrap_or(0);
    makedev(major as u64, minor as u64)
}

fn set_mtime(path: &Path, mtime: u64) {
    let t = TimeSpec::new(mtime.min(i64::MAX as u64) as i64, 0);
    let _ = utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    );
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let n = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and live for the call; value is a valid slice.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn geteuid_is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
