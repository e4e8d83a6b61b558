//! The node's secp256k1 key: from `VERITY_NODE_KEY` (hex), from a file, or created on first start with
//! file mode 0600.

use std::io::Write;
use std::path::Path;

use verity_core::SecretKey;

/// Write a key file readable only by its owner; refuses to overwrite.
pub fn write_key_file(path: &Path, key: &SecretKey) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(format!("{}\n", key.to_hex()).as_bytes())?;
    f.sync_all()
}

/// Read a key file (64 hex digits, optional `0x`).
pub fn read_key_file(path: &Path) -> Result<SecretKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    SecretKey::from_hex(&text).map_err(|e| format!("key file {}: {e}", path.display()))
}

/// The node key: `env_hex` if given, else the file at `path`, else a new key written to `path`.
pub fn load_or_create(path: &Path, env_hex: Option<&str>) -> Result<(SecretKey, bool), String> {
    if let Some(h) = env_hex {
        return SecretKey::from_hex(h)
            .map(|k| (k, false))
            .map_err(|e| format!("VERITY_NODE_KEY: {e}"));
    }
    if path.exists() {
        return read_key_file(path).map(|k| (k, false));
    }
    let key = SecretKey::random();
    write_key_file(path, &key)
        .map_err(|e| format!("cannot create key file {}: {e}", path.display()))?;
    Ok((key, true))
}
