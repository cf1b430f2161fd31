//! CA and workload files on disk, in Istio's layouts.
//!
//! | directory | files | made by |
//! |---|---|---|
//! | root | `root-cert.pem`, `root-key.pem` | `mesh-ca root` |
//! | cacerts | `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`, `root-cert.pem` | `mesh-ca intermediate` |
//! | workload | `key.pem`, `cert-chain.pem`, `root-cert.pem` | `mesh-ca issue` (istio-agent's `/etc/certs`) |
//!
//! # Safety rules
//!
//! - Private keys are created with mode `0600` (the temporary file is created with that
//!   mode, so the key is never readable by others, not even briefly).
//! - A private key that group or others can access (any of the `0o077` bits) is **refused**
//!   on load, with an error naming the file and the fix (`chmod 600 FILE`). The mode is taken
//!   from the opened file, following symlinks (a Kubernetes secret volume mounts keys as
//!   symlinks; give it `defaultMode: 0400`).
//! - Every write is atomic: a temporary file in the same directory, `fsync`, then `rename`.
//!   An existing file is replaced only when `overwrite` is set.
//! - Missing output directories are created with mode `0700`.

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{CertBundle, Error, authority::Cacerts, authority::RootCa, key::PrivateKeyPem};

/// `ca-cert.pem`: the signing CA certificate.
pub const CA_CERT: &str = "ca-cert.pem";
/// `ca-key.pem`: the signing CA's key.
pub const CA_KEY: &str = "ca-key.pem";
/// `cert-chain.pem`: a chain, leaf or CA first, root last.
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// `root-cert.pem`: the root certificate(s).
pub const ROOT_CERT: &str = "root-cert.pem";
/// `root-key.pem`: the root's key.
pub const ROOT_KEY: &str = "root-key.pem";
/// `key.pem`: a workload's key.
pub const KEY: &str = "key.pem";

/// Mode of private key files.
pub const KEY_MODE: u32 = 0o600;
/// Mode of certificate files.
pub const CERT_MODE: u32 = 0o644;

/// The largest PEM file read, in bytes.
const MAX_FILE_LEN: u64 = 1024 * 1024;

/// Reads Istio's four `cacerts` files from `dir`.
///
/// # Errors
/// [`Error::Io`] for a missing or unreadable file; [`Error::InsecureKeyFile`] when
/// `ca-key.pem` can be accessed by group or others.
pub fn read_cacerts(dir: &Path) -> Result<Cacerts, Error> {
    Ok(Cacerts {
        ca_key: read_private_key(&dir.join(CA_KEY))?,
        ca_cert: read_text(&dir.join(CA_CERT))?,
        cert_chain: read_text(&dir.join(CERT_CHAIN))?,
        root_cert: read_text(&dir.join(ROOT_CERT))?,
    })
}

/// Writes Istio's four `cacerts` files into `dir`; returns the paths written.
///
/// # Errors
/// [`Error::AlreadyExists`] if a file exists and `overwrite` is false (nothing is written
/// then); [`Error::Io`] otherwise.
pub fn write_cacerts(
    dir: &Path,
    cacerts: &Cacerts,
    overwrite: bool,
) -> Result<Vec<PathBuf>, Error> {
    write_set(
        dir,
        &[
            (CA_KEY, cacerts.ca_key.expose_secret(), KEY_MODE),
            (CA_CERT, &cacerts.ca_cert, CERT_MODE),
            (CERT_CHAIN, &cacerts.cert_chain, CERT_MODE),
            (ROOT_CERT, &cacerts.root_cert, CERT_MODE),
        ],
        overwrite,
    )
}

/// Reads `root-cert.pem` and `root-key.pem` from `dir`.
///
/// # Errors
/// As [`read_cacerts`].
pub fn read_root(dir: &Path) -> Result<RootCa, Error> {
    Ok(RootCa {
        key: read_private_key(&dir.join(ROOT_KEY))?,
        cert_pem: read_text(&dir.join(ROOT_CERT))?,
    })
}

/// Writes `root-cert.pem` and `root-key.pem` into `dir`; returns the paths written.
///
/// # Errors
/// As [`write_cacerts`].
pub fn write_root(dir: &Path, root: &RootCa, overwrite: bool) -> Result<Vec<PathBuf>, Error> {
    write_set(
        dir,
        &[
            (ROOT_KEY, root.key.expose_secret(), KEY_MODE),
            (ROOT_CERT, &root.cert_pem, CERT_MODE),
        ],
        overwrite,
    )
}

/// Writes a workload's `key.pem` (when given), `cert-chain.pem` (leaf, intermediates, root)
/// and `root-cert.pem`, as istio-agent lays out `/etc/certs`; returns the paths written.
///
/// # Errors
/// As [`write_cacerts`].
pub fn write_workload(
    dir: &Path,
    key: Option<&PrivateKeyPem>,
    bundle: &CertBundle,
    overwrite: bool,
) -> Result<Vec<PathBuf>, Error> {
    let chain = bundle.chain_pem();
    let mut files = Vec::with_capacity(3);
    if let Some(key) = key {
        files.push((KEY, key.expose_secret(), KEY_MODE));
    }
    files.push((CERT_CHAIN, chain.as_str(), CERT_MODE));
    files.push((ROOT_CERT, bundle.root_pem(), CERT_MODE));
    write_set(dir, &files, overwrite)
}

fn write_set(
    dir: &Path,
    files: &[(&str, &str, u32)],
    overwrite: bool,
) -> Result<Vec<PathBuf>, Error> {
    create_dir(dir)?;
    let paths: Vec<PathBuf> = files.iter().map(|(name, ..)| dir.join(name)).collect();
    if !overwrite && let Some(existing) = paths.iter().find(|p| p.exists()) {
        return Err(Error::AlreadyExists {
            path: existing.clone(),
        });
    }
    for ((_, contents, mode), path) in files.iter().zip(&paths) {
        write_atomic(path, contents.as_bytes(), *mode, true)?;
    }
    Ok(paths)
}

/// Creates `dir` (and its parents) with mode `0700` if it is missing.
///
/// # Errors
/// [`Error::Io`].
pub fn create_dir(dir: &Path) -> Result<(), Error> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create directory", dir, e))
}

/// Writes `contents` to `path` atomically with permission bits `mode`: a temporary file
/// created with `mode` in the same directory, `fsync`, `rename`.
///
/// # Errors
/// [`Error::AlreadyExists`] if `path` exists and `overwrite` is false; [`Error::Io`].
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32, overwrite: bool) -> Result<(), Error> {
    if !overwrite && path.exists() {
        return Err(Error::AlreadyExists {
            path: path.to_owned(),
        });
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let tmp = dir.join(format!(
        ".{file_name}.tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        // The umask may have removed bits from `mode`; never added any. Set it exactly.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| Error::io("set permissions of", &tmp, e))?;
        file.write_all(contents)
            .map_err(|e| Error::io("write", &tmp, e))?;
        file.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("write", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Make the rename durable; failure here does not undo the write.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a private key file, refusing one that group or others can access.
///
/// # Errors
/// [`Error::InsecureKeyFile`] (the message names the file and `chmod 600 FILE`);
/// [`Error::Io`].
pub fn read_private_key(path: &Path) -> Result<PrivateKeyPem, Error> {
    let file = fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("read", path, e))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::InsecureKeyFile {
            path: path.to_owned(),
            mode,
        });
    }
    read_limited(file, path).map(PrivateKeyPem::new)
}

/// Reads a (public) PEM file as text, at most 1 MiB.
///
/// # Errors
/// [`Error::Io`].
pub fn read_text(path: &Path) -> Result<String, Error> {
    let file = fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
    read_limited(file, path)
}

fn read_limited(file: fs::File, path: &Path) -> Result<String, Error> {
    let mut text = String::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io("read", path, e))?;
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(Error::io(
            "read",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "larger than 1 MiB"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_written_0600_and_certs_0644() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let cert = dir.path().join("c.pem");
        write_atomic(&key, b"secret", KEY_MODE, false).unwrap();
        write_atomic(&cert, b"public", CERT_MODE, false).unwrap();
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        assert_eq!(read_private_key(&key).unwrap().expose_secret(), "secret");
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn refuses_to_overwrite_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pem");
        write_atomic(&path, b"one", CERT_MODE, false).unwrap();
        let err = write_atomic(&path, b"two", CERT_MODE, false).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        write_atomic(&path, b"two", CERT_MODE, true).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two");
    }

    #[test]
    fn refuses_keys_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca-key.pem");
        for bad in [0o644, 0o640, 0o604, 0o620, 0o700 | 0o001] {
            fs::write(&path, "k").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(bad)).unwrap();
            let err = read_private_key(&path).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::InsecureKeyFile { .. }), "{msg}");
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
        }
        for good in [0o600, 0o400] {
            fs::set_permissions(&path, fs::Permissions::from_mode(good)).unwrap();
            assert!(read_private_key(&path).is_ok());
        }
    }

    #[test]
    fn missing_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_cacerts(dir.path()).unwrap_err();
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
    }

    #[test]
    fn creates_missing_directories_private() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a/b");
        write_atomic(&out.join("f"), b"x", CERT_MODE, false).unwrap_err();
        create_dir(&out).unwrap();
        assert_eq!(mode(&out), 0o700);
    }
}
