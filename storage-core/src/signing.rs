//! The store's Ed25519 signing key: signs audit checkpoints and erase certificates. Kept in the
//! key directory (never beside the segments) as `signing.key`; the public half is published so
//! that anyone can verify offline.

use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::io::{read_exact_at, write_file_atomic, Vfs};
use crate::keys::random_bytes;
use crate::{Error, Result};

const FILE_NAME: &str = "signing.key";
const MAGIC: &[u8; 8] = b"CAMVSIG1";
/// magic (8) + seed (32) + crc32 (4).
const FILE_BYTES: usize = 44;

/// Loads the signing key from `dir`, creating it on first use (write, fsync, fsync dir).
pub(crate) fn load_or_create(vfs: &Arc<dyn Vfs>, dir: &Path) -> Result<SigningKey> {
    let path = dir.join(FILE_NAME);
    let mut buf = [0u8; FILE_BYTES];
    if vfs.exists(&path) {
        let f = vfs.open(&path).map_err(|e| Error::io("open signing key", &path, e))?;
        read_exact_at(f.as_ref(), &mut buf, 0).map_err(|e| Error::io("read signing key", &path, e))?;
        if &buf[..8] != MAGIC || crc32fast::hash(&buf[..40]).to_le_bytes() != buf[40..] {
            return Err(Error::Corrupt { path, offset: Some(0), detail: "signing key file fails its check".into() });
        }
    } else {
        buf[..8].copy_from_slice(MAGIC);
        random_bytes(&mut buf[8..40])?;
        let crc = crc32fast::hash(&buf[..40]);
        buf[40..].copy_from_slice(&crc.to_le_bytes());
        write_file_atomic(vfs.as_ref(), dir, &path, &buf).map_err(|e| Error::io("create signing key", &path, e))?;
    }
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&buf[8..40]);
    let key = SigningKey::from_bytes(&seed);
    zeroize::Zeroize::zeroize(&mut seed);
    zeroize::Zeroize::zeroize(&mut buf);
    Ok(key)
}

/// Signs `msg`; returns the signature as hex.
pub(crate) fn sign_hex(key: &SigningKey, msg: &[u8]) -> String {
    hex(&key.sign(msg).to_bytes())
}

/// Verifies a hex signature of `msg` under a hex Ed25519 public key.
pub fn verify_hex(public_key_hex: &str, msg: &[u8], signature_hex: &str) -> bool {
    let (Some(pk), Some(sig)) = (unhex::<32>(public_key_hex), unhex::<64>(signature_hex)) else { return false };
    let Ok(vk) = VerifyingKey::from_bytes(&pk) else { return false };
    vk.verify(msg, &Signature::from_bytes(&sig)).is_ok()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses exactly `N` bytes of hex.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
