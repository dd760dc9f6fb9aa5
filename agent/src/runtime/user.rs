//! Users and groups of an image (its `/etc/passwd` and `/etc/group`), to resolve `user` strings
//! the way Docker does: `name|uid[:group|gid]`.

use std::io::Read;
use std::path::Path;

use super::spec::SpecError;

/// Largest passwd/group file we read from an image.
const MAX_DB_FILE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The parsed user and group databases of one root filesystem (empty when it has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    users: Vec<PasswdEntry>,
    groups: Vec<GroupEntry>,
}

/// A `user` string resolved to numeric ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups the user is a member of in `/etc/group`.
    pub additional_gids: Vec<u32>,
    /// Home directory from `/etc/passwd`, if the user has an entry.
    pub home: Option<String>,
}

impl UserDb {
    /// Parses the contents of a passwd and a group file; malformed lines are skipped.
    pub fn parse(passwd: &str, group: &str) -> Self {
        let users = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() < 7 || f[0].is_empty() {
                    return None;
                }
                Some(PasswdEntry {
                    name: f[0].to_string(),
                    uid: f[2].parse().ok()?,
                    gid: f[3].parse().ok()?,
                    home: f[5].to_string(),
                })
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() < 4 || f[0].is_empty() {
                    return None;
                }
                Some(GroupEntry {
                    name: f[0].to_string(),
                    gid: f[2].parse().ok()?,
                    members: f[3]
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect(),
                })
            })
            .collect();
        UserDb { users, groups }
    }

    /// Reads `<rootfs>/etc/passwd` and `<rootfs>/etc/group`. Missing files, and files that are
    /// symlinks (which would resolve against the host's root), count as empty.
    pub fn load(rootfs: &Path) -> std::io::Result<Self> {
        let etc = rootfs.join("etc");
        let passwd = read_plain_file(&etc, "passwd")?;
        let group = read_plain_file(&etc, "group")?;
        Ok(Self::parse(&passwd, &group))
    }

    /// Resolves `user` (`None` or empty = root) to ids. Names must exist in the databases;
    /// numeric ids need not.
    pub fn resolve(&self, user: Option<&str>) -> Result<ResolvedUser, SpecError> {
        let user = user.unwrap_or("").trim();
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let u = if u.is_empty() { "0" } else { u };
        let entry = match u.parse::<u32>() {
            Ok(uid) => self.users.iter().find(|e| e.uid == uid),
            Err(_) => Some(
                self.users
                    .iter()
                    .find(|e| e.name == u)
                    .ok_or_else(|| SpecError::UnknownUser(u.to_string()))?,
            ),
        };
        let uid = match (u.parse::<u32>(), entry) {
            (Ok(uid), _) => uid,
            (Err(_), Some(e)) => e.uid,
            (Err(_), None) => return Err(SpecError::UnknownUser(u.to_string())),
        };
        let gid = match g {
            Some(g) if !g.is_empty() => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => self
                    .groups
                    .iter()
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| SpecError::UnknownGroup(g.to_string()))?,
            },
            _ => entry.map(|e| e.gid).unwrap_or(0),
        };
        let additional_gids = match entry {
            Some(e) => {
                let mut gids: Vec<u32> = self
                    .groups
                    .iter()
                    .filter(|grp| grp.gid != gid && grp.members.contains(&e.name))
                    .map(|grp| grp.gid)
                    .collect();
                gids.sort_unstable();
                gids.dedup();
                gids
            }
            None => Vec::new(),
        };
        Ok(ResolvedUser {
            uid,
            gid,
            additional_gids,
            home: entry.map(|e| e.home.clone()).filter(|h| !h.is_empty()),
        })
    }
}

fn read_plain_file(dir: &Path, name: &str) -> std::io::Result<String> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(String::new()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    }
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(String::new()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    }
    let mut buf = Vec::new();
    std::fs::File::open(&path)?
        .take(MAX_DB_FILE)
        .read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n\
                          app:x:1000:1000::/home/app:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:app\napp:x:1000:\nstaff:x:50:app,www\n";

    #[test]
    fn resolves_names_ids_and_groups() {
        let db = UserDb::parse(PASSWD, GROUP);
        let root = db.resolve(None).unwrap();
        assert_eq!(
            (root.uid, root.gid, root.home.as_deref()),
            (0, 0, Some("/root"))
        );
        let app = db.resolve(Some("app")).unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.additional_gids, vec![33, 50]);
        let www = db.resolve(Some("www:staff")).unwrap();
        assert_eq!((www.uid, www.gid), (33, 50));
        let num = db.resolve(Some("4242:7")).unwrap();
        assert_eq!((num.uid, num.gid, num.home), (4242, 7, None));
        let by_uid = db.resolve(Some("1000")).unwrap();
        assert_eq!(
            (by_uid.gid, by_uid.home.as_deref()),
            (1000, Some("/home/app"))
        );
        assert!(matches!(
            db.resolve(Some("nobody")),
            Err(SpecError::UnknownUser(_))
        ));
        assert!(matches!(
            db.resolve(Some("app:nogroup")),
            Err(SpecError::UnknownGroup(_))
        ));
    }

    #[test]
    fn empty_db_accepts_numeric_only() {
        let db = UserDb::default();
        assert_eq!(db.resolve(Some("12:34")).unwrap().uid, 12);
        assert!(db.resolve(Some("root")).is_err());
    }

    #[test]
    fn load_ignores_symlinked_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("etc/passwd")).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        let db = UserDb::load(dir.path()).unwrap();
        assert!(db.users.is_empty());
        assert_eq!(db.groups.len(), 4);
        assert_eq!(
            UserDb::load(&dir.path().join("missing")).unwrap(),
            UserDb::default()
        );
    }
}
