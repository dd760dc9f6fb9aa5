//! What is on the lab's disks: the end-to-end tests look for plaintext secrets there.

use std::path::{Path, PathBuf};

/// The tmpfs mount points on this machine.
pub fn tmpfs_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let (point, kind) = (fields.nth(1)?, fields.next()?);
            (kind == "tmpfs").then(|| PathBuf::from(point))
        })
        .collect()
}

/// The regular files under `dir` (tmpfs mounts and other file systems' special files left out)
/// whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let skip = tmpfs_mounts();
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if !skip.contains(&path) {
                    stack.push(path);
                }
            } else if kind.is_file()
                && let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}
