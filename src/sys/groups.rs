//! The group database as meshinit reads it itself, without NSS (which can stall pod start-up,
//! istio/istio#48416): `/etc/group` parsed with the rules glibc's `getgrnam` applies to the
//! file, so a name resolves to the gid iptables (which calls `getgrnam`) will install.

use std::collections::HashMap;
use std::path::Path;

/// Where group names are looked up.
pub const GROUP_FILE: &str = "/etc/group";

/// Group names and their gids, from a group file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Groups(HashMap<String, u32>);

impl Groups {
    /// Parses `/etc/group` syntax (`name:password:gid[:members]`) as `getgrnam` reads the
    /// file: leading blanks are skipped; blank lines, `#` comments, NIS compat lines (`+…`,
    /// `-…`) and malformed lines (fewer than three fields, an empty name, a gid that is not a
    /// decimal number) are ignored; the first entry of a name wins.
    pub fn parse(text: &str) -> Groups {
        let mut map = HashMap::new();
        for line in text.lines() {
            let line = line.trim_start_matches([' ', '\t']);
            if line.is_empty() || line.starts_with(['#', '+', '-']) {
                continue;
            }
            let mut fields = line.split(':');
            let (Some(name), Some(_password), Some(gid)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if name.is_empty() || gid.is_empty() || !gid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(gid) = gid.parse::<u32>() {
                map.entry(name.to_string()).or_insert(gid);
            }
        }
        Groups(map)
    }

    /// Reads a group file; a missing file is an empty database (names then fail by name, or
    /// fall back to the system's lookup where the caller does so).
    pub fn load(path: &Path) -> Result<Groups, GroupsError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Groups::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Groups::default()),
            Err(e) => Err(GroupsError {
                path: path.to_path_buf(),
                error: std::sync::Arc::new(e),
            }),
        }
    }

    /// The gid of a group name.
    pub fn gid(&self, name: &str) -> Option<u32> {
        self.0.get(name).copied()
    }
}

/// The group file could not be read.
#[derive(Clone, Debug, thiserror::Error)]
#[error("reading {}: {error}", path.display())]
pub struct GroupsError {
    /// The file.
    pub path: std::path::PathBuf,
    /// The system's answer.
    #[source]
    pub error: std::sync::Arc<std::io::Error>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_valid_entry_of_a_name_wins_as_with_getgrnam() {
        let groups = Groups::parse(concat!(
            "root:x:0:\n",
            "# java:x:9:\n",
            "# comment:x:5:\n",
            "   # indented comment\n",
            "\n",
            "broken line\n",
            "short:x\n",
            ":x:77:\n",
            "java:x:notanumber:\n",
            "java:x:-5:\n",
            "java:x:1001:a,b\n",
            "java:x:7:\n",
            "  ftp:*:50\n",
            "+nis:x:60:\n",
            "-gone:x:61:\n",
            "+\n",
            "big:x:4294967296:\n",
        ));
        assert_eq!(groups.gid("root"), Some(0));
        assert_eq!(groups.gid("java"), Some(1001), "first valid entry wins");
        assert_eq!(
            groups.gid("ftp"),
            Some(50),
            "leading blanks, no members field"
        );
        assert_eq!(groups.gid("# java"), None);
        assert_eq!(groups.gid("+nis"), None);
        assert_eq!(groups.gid("nis"), None);
        assert_eq!(groups.gid("-gone"), None);
        assert_eq!(groups.gid("short"), None);
        assert_eq!(groups.gid(""), None);
        assert_eq!(groups.gid("big"), None, "gid beyond u32");
        assert_eq!(groups.gid("nobody-here"), None);
    }

    #[test]
    fn a_file_is_read_from_its_path_and_a_missing_one_is_empty() {
        let dir = std::env::temp_dir().join(format!("meshinit-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("group");
        std::fs::write(&file, "g:x:5001:\ng:x:5002:\n").unwrap();
        assert_eq!(Groups::load(&file).unwrap().gid("g"), Some(5001));
        assert_eq!(
            Groups::load(&dir.join("missing")).unwrap(),
            Groups::default()
        );
        let err = Groups::load(&dir).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("reading {}", dir.display())),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
