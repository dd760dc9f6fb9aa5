//! Container root filesystems: overlayfs over an image's unpacked layers, with a per-container
//! upper and work directory. Needs root (CAP_SYS_ADMIN) in the host's mount namespace.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::{Image, ImageError, Result, io_err};

/// Longest option string the classic mount(2) accepts (one page, NUL included).
const MAX_MOUNT_DATA: usize = 4095;

/// A mounted root filesystem under `<container_dir>/rootfs`; unmounted on drop unless
/// [`Rootfs::keep_mounted`] was called.
#[derive(Debug)]
pub struct Rootfs {
    target: PathBuf,
    upper: PathBuf,
    mounted: bool,
}

/// Mounts `image` at `<container_dir>/rootfs` (upper and work dirs beside it; all created).
pub fn mount_rootfs(image: &Image, container_dir: &Path) -> Result<Rootfs> {
    let target = container_dir.join("rootfs");
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    for d in [&target, &upper, &work] {
        std::fs::create_dir_all(d).map_err(io_err("creating", d.as_path()))?;
    }
    let merr = |reason: String| ImageError::Mount {
        path: target.clone(),
        reason,
    };
    if is_mounted(&target) {
        return Err(merr("already mounted".into()));
    }
    let mut lower: Vec<PathBuf> = image.layer_dirs.iter().rev().cloned().collect();
    if lower.is_empty() {
        let empty = container_dir.join("empty");
        std::fs::create_dir_all(&empty).map_err(io_err("creating", empty.clone()))?;
        lower.push(empty);
    }
    for p in lower.iter().chain([&upper, &work]) {
        let s = p.to_string_lossy();
        if s.contains([':', ',']) || !p.is_absolute() {
            return Err(merr(format!(
                "{s:?}: overlay paths must be absolute and free of ':' and ','"
            )));
        }
    }
    let lowers: Vec<String> = lower
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        upper.display(),
        work.display()
    );
    if opts.len() <= MAX_MOUNT_DATA {
        nix::mount::mount(
            Some("overlay"),
            &target,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| merr(format!("mount overlay ({} layers): {e}", lowers.len())))?;
    } else {
        // Too many layers for one page of options: the new mount API takes them one by one.
        mount_with_fsconfig(&lowers, &upper, &work, &target).map_err(|e| {
            merr(format!(
                "mount overlay ({} layers, fsconfig): {e}",
                lowers.len()
            ))
        })?;
    }
    Ok(Rootfs {
        target,
        upper,
        mounted: true,
    })
}

impl Rootfs {
    /// Takes over a rootfs mounted earlier (e.g. by a previous agent process).
    pub fn adopt(container_dir: &Path) -> Rootfs {
        let target = container_dir.join("rootfs");
        let mounted = is_mounted(&target);
        Rootfs {
            target,
            upper: container_dir.join("upper"),
            mounted,
        }
    }

    /// The merged root filesystem (the bundle's `root.path`).
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// The container's writable layer.
    pub fn upper_dir(&self) -> &Path {
        &self.upper
    }

    /// Whether this handle still owns a mount.
    pub fn is_mounted(&self) -> bool {
        self.mounted
    }

    /// Unmounts (lazily if busy). Idempotent.
    pub fn unmount(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        match nix::mount::umount2(&self.target, MntFlags::empty()) {
            Ok(()) => {}
            Err(nix::errno::Errno::EBUSY) => {
                nix::mount::umount2(&self.target, MntFlags::MNT_DETACH).map_err(|e| {
                    ImageError::Mount {
                        path: self.target.clone(),
                        reason: format!("lazy unmount: {e}"),
                    }
                })?
            }
            Err(nix::errno::Errno::EINVAL) if !is_mounted(&self.target) => {}
            Err(e) => {
                return Err(ImageError::Mount {
                    path: self.target.clone(),
                    reason: format!("unmount: {e}"),
                });
            }
        }
        self.mounted = false;
        Ok(())
    }

    /// Leaves the filesystem mounted when this handle is dropped; returns its path.
    pub fn keep_mounted(mut self) -> PathBuf {
        self.mounted = false;
        self.target.clone()
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = self.unmount()
        {
            tracing::warn!(error = %e, "cannot unmount rootfs");
        }
    }
}

/// Whether `path` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| Path::new(&unescape(mp)) == path)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount_with_fsconfig(
    lowers: &[String],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    const FSOPEN_CLOEXEC: libc::c_uint = 1;
    const FSCONFIG_SET_STRING: libc::c_uint = 1;
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let cstr = |s: &[u8]| CString::new(s).map_err(std::io::Error::other);
    let check = |rc: libc::c_long| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };

    let name = cstr(b"overlay")?;
    // SAFETY: plain syscalls with valid NUL-terminated strings; returned fds are owned below.
    let fs = check(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })?;
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    let set = |key: &str, value: &[u8]| -> std::io::Result<()> {
        let (k, v) = (cstr(key.as_bytes())?, cstr(value)?);
        // SAFETY: fs is a valid fs context fd; k and v outlive the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                FSCONFIG_SET_STRING,
                k.as_ptr(),
                v.as_ptr(),
                0,
            )
        })
        .map(|_| ())
        .map_err(|e| std::io::Error::new(e.kind(), format!("fsconfig {key}: {e}")))
    };
    for l in lowers {
        set("lowerdir+", l.as_bytes())?;
    }
    set("upperdir", upper.as_os_str().as_bytes())?;
    set("workdir", work.as_os_str().as_bytes())?;
    // SAFETY: as above.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    let mnt =
        check(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?;
    let mnt = unsafe { OwnedFd::from_raw_fd(mnt as i32) };
    let (empty, t) = (cstr(b"")?, cstr(target.as_os_str().as_bytes())?);
    // SAFETY: mnt is a valid mount fd; strings outlive the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}
