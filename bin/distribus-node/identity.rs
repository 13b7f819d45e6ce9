//! The node's key files: its persistent identity key (loaded from a file,
//! or created with mode 0600 when the file is missing) with its last epoch
//! beside it, and a closed network's key (made by `keygen`, refused unless
//! mode 0600).

use std::{
    fs::OpenOptions,
    io::{ErrorKind, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use distribus::Keypair;

/// Reads a network key file, refused unless only its owner can read it.
pub(crate) fn load_network_key(path: &Path) -> Result<distribus::NetworkKey, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("network key file {shown}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "network key file {shown} is accessible by group or others (mode {mode:o}); \
             run: chmod 600 {shown}"
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("network key file {shown}: {e}"))?;
    distribus::NetworkKey::from_key_file(&text).map_err(|e| format!("{shown}: {e}"))
}

/// Writes a new network key to `path` (mode 0600); an existing file is
/// left alone and refused.
pub(crate) fn write_network_key(path: &Path) -> Result<distribus::NetworkKey, String> {
    let key = distribus::NetworkKey::generate();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("network key file {}: {e}", path.display()))?;
    f.write_all(key.to_key_file().as_bytes())
        .map_err(|e| format!("network key file {}: {e}", path.display()))?;
    Ok(key)
}

/// Reads an allow-list file: one host id per line; blank lines and text
/// after `#` are ignored. A bad line is an error naming it.
pub(crate) fn load_allow_list(
    path: &Path,
) -> Result<std::collections::BTreeSet<distribus::PeerId>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("allow-list {shown}: {e}"))?;
    let mut hosts = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.split('#').next().unwrap_or_default().trim();
        if id.is_empty() {
            continue;
        }
        let host = id
            .parse()
            .map_err(|e| format!("allow-list {shown}, line {}: {id:?}: {e}", n + 1))?;
        hosts.insert(host);
    }
    Ok(hosts)
}

/// Loads the key in `path`, or creates one there. Returns the key and
/// whether it was created.
pub(crate) fn load_or_create(path: &Path) -> Result<(Keypair, bool), String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "identity file {shown} is accessible by group or others (mode {mode:o}); \
                     run `chmod 600 {shown}`"
                ));
            }
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read identity file {shown}: {e}"))?;
            let key = Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                format!("identity file {shown} does not hold a distribus host key ({e})")
            })?;
            Ok((key, false))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| format!("cannot encode a new host key: {e}"))?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("cannot create identity file {shown}: {e}"))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write identity file {shown}: {e}"))?;
            Ok((key, true))
        }
        Err(e) => Err(format!("cannot read identity file {shown}: {e}")),
    }
}

/// Where the last epoch of the identity in `identity` is kept:
/// `<identity>.epoch`, beside it.
pub(crate) fn epoch_file(identity: &Path) -> PathBuf {
    let mut name = identity.as_os_str().to_owned();
    name.push(".epoch");
    PathBuf::from(name)
}

/// The epoch kept in `path` (decimal text), `None` if there is no file.
pub(crate) fn load_epoch(path: &Path) -> Result<Option<u64>, String> {
    let shown = path.display();
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("epoch file {shown} does not hold an epoch ({e})")),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read epoch file {shown}: {e}")),
    }
}

/// Keeps `epoch` in `path`: written to a temporary file beside it, synced,
/// then renamed over it, so a crash leaves the old value or the new one.
pub(crate) fn store_epoch(path: &Path, epoch: u64) -> Result<(), String> {
    let shown = path.display();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{epoch}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| format!("cannot write epoch file {shown}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_is_kept_beside_the_identity_and_read_back() {
        let dir = std::env::temp_dir().join(format!("distribus-epoch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = epoch_file(&dir.join("node.key"));
        assert_eq!(file, dir.join("node.key.epoch"));
        assert_eq!(load_epoch(&file).unwrap(), None);
        store_epoch(&file, 1_800_000_000_000_000_000).unwrap();
        assert_eq!(load_epoch(&file).unwrap(), Some(1_800_000_000_000_000_000));
        store_epoch(&file, 7).unwrap();
        assert_eq!(load_epoch(&file).unwrap(), Some(7));
        std::fs::write(&file, "not a number").unwrap();
        assert!(load_epoch(&file)
            .unwrap_err()
            .contains("does not hold an epoch"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let (a, created) = load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
    }

    #[test]
    fn refuses_open_or_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, b"not a key").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create(&path).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_or_create(&path)
            .unwrap_err()
            .contains("does not hold a distribus host key"));
    }
}
