//! Private files: a node's data is readable by its own user only.
//!
//! Directories this crate creates are `0700` and files `0600` ([`create_dir_all`],
//! [`create_new_file`]); [`tighten`] brings an existing tree to those modes at start and reports
//! what it changed, so a data dir written by an older version (or copied with a loose umask) does
//! not stay world-readable. Libraries that create their own files (sled, raft-log) are covered by
//! the node setting its umask to `077` before anything is opened, and by [`tighten`] at the next
//! start.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every directory in a data dir.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in a data dir.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and any missing parents with mode `0700`. Existing directories are left to
/// [`tighten`].
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Creates a new file with mode `0600` for reading and writing, failing if it exists.
pub fn create_new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
}

/// One mode change made by [`tighten`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeChange {
    /// The file or directory.
    pub path: PathBuf,
    /// Its mode before (permission bits).
    pub from: u32,
    /// Its mode now.
    pub to: u32,
}

/// Whether a failed `chmod` means the mode cannot be changed here (not owned by this user,
/// a filesystem without Unix modes, a read-only mount) rather than something being wrong.
fn cannot_change_mode(e: &io::Error) -> bool {
    // (ENOTSUP and EOPNOTSUPP are one value on Linux, two on some other systems.)
    e.raw_os_error()
        .is_some_and(|c| [libc::EPERM, libc::EROFS, libc::ENOTSUP, libc::EOPNOTSUPP].contains(&c))
        || matches!(
            e.kind(),
            io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::Unsupported
        )
}

/// Walks `root` (not following symbolic links below it; a `root` that is itself a symbolic link
/// is resolved first) and removes group and other permissions: a directory with any of them
/// becomes `0700`, a file `0600`. Returns every change; a missing `root` is no change. A mode
/// that cannot be changed (EPERM, ENOTSUP, read-only filesystem) is logged as a warning with its
/// path and left as it is: loose modes must not stop a node. Other errors are returned.
pub fn tighten(root: &Path) -> io::Result<Vec<ModeChange>> {
    let mut changes = Vec::new();
    let Ok(meta) = fs::symlink_metadata(root) else {
        return Ok(changes);
    };
    let root = if meta.file_type().is_symlink() {
        fs::canonicalize(root)?
    } else {
        root.to_path_buf()
    };
    let mut stack = vec![root];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path)?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let want = if kind.is_dir() { DIR_MODE } else { FILE_MODE };
        if mode & 0o077 != 0 {
            match fs::set_permissions(&path, Permissions::from_mode(want)) {
                Ok(()) => changes.push(ModeChange {
                    path: path.clone(),
                    from: mode,
                    to: want,
                }),
                Err(e) if cannot_change_mode(&e) => tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:04o}"),
                    error = %e,
                    "cannot restrict the permissions of a data file (group or others have \
                     access); left as it is"
                ),
                Err(e) => return Err(e),
            }
        }
        if kind.is_dir() {
            for e in fs::read_dir(&path)? {
                stack.push(e?.path());
            }
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn created_paths_are_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/b");
        create_dir_all(&dir).unwrap();
        assert_eq!(mode(&d.path().join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("f");
        create_new_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        assert!(
            create_new_file(&f).is_err(),
            "create_new refuses an existing file"
        );
    }

    #[test]
    fn loose_modes_are_tightened_and_reported() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        fs::create_dir_all(root.join("sm/blobs")).unwrap();
        fs::write(root.join("sm/db"), b"x").unwrap();
        fs::write(root.join("sm.id"), b"x").unwrap();
        fs::write(root.join("private"), b"x").unwrap();
        for (p, m) in [
            ("", 0o755),
            ("sm", 0o775),
            ("sm/blobs", 0o700),
            ("sm/db", 0o644),
            ("sm.id", 0o666),
            ("private", 0o400),
        ] {
            fs::set_permissions(root.join(p), Permissions::from_mode(m)).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let mut changes = tighten(&root).unwrap();
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        let got: Vec<(String, u32, u32)> = changes
            .iter()
            .map(|c| {
                let rel = c.path.strip_prefix(&root).unwrap().display().to_string();
                (rel, c.from, c.to)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("".to_string(), 0o755, 0o700),
                ("sm".to_string(), 0o775, 0o700),
                ("sm/db".to_string(), 0o644, 0o600),
                ("sm.id".to_string(), 0o666, 0o600),
            ]
        );
        assert_eq!(mode(&root.join("private")), 0o400, "already private");
        assert_eq!(mode(&root.join("sm/blobs")), 0o700);
        // The second pass changes nothing; a missing root is fine.
        assert!(tighten(&root).unwrap().is_empty());
        assert!(tighten(&d.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn a_symlinked_root_is_resolved_and_walked() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        fs::create_dir_all(real.join("sm")).unwrap();
        fs::write(real.join("sm/db"), b"x").unwrap();
        fs::set_permissions(&real, Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(real.join("sm"), Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(real.join("sm/db"), Permissions::from_mode(0o644)).unwrap();
        let link = d.path().join("data");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let changes = tighten(&link).unwrap();
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(mode(&real), 0o700);
        assert_eq!(mode(&real.join("sm/db")), 0o600);
        assert_eq!(mode(&link), 0o777, "the link itself is untouched");
    }

    #[test]
    fn mode_changes_the_filesystem_refuses_are_not_errors() {
        for code in [libc::EPERM, libc::EROFS, libc::ENOTSUP] {
            assert!(cannot_change_mode(&io::Error::from_raw_os_error(code)));
        }
        assert!(!cannot_change_mode(&io::Error::from_raw_os_error(
            libc::EIO
        )));
        assert!(!cannot_change_mode(&io::Error::from_raw_os_error(
            libc::ENOENT
        )));
    }
}
