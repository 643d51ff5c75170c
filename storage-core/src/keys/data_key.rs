use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{Error, Result};

/// A 256-bit AES-GCM data key. Zeroed when dropped; its `Debug` never prints the bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut k = [0u8; 32];
        random_bytes(&mut k)?;
        Ok(DataKey(k))
    }

    /// Wraps raw key bytes (from a provider's unwrap).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }

    /// The raw key bytes, for a [`super::KekProvider`] to wrap. Never log or store them.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Fills `buf` from the OS CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf).map_err(|e| Error::Key(format!("the OS random source failed: {e}")))
}

/// A segment's AEAD: the expanded key schedule is zeroed on drop (aes "zeroize" feature).
pub(crate) struct SegmentCipher(Aes256Gcm);

impl SegmentCipher {
    pub(crate) fn new(key: &DataKey) -> Self {
        SegmentCipher(Aes256Gcm::new(key.expose().into()))
    }

    /// Encrypts `buf` in place; returns the 16-byte tag.
    pub(crate) fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16]> {
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::from(*nonce), aad, buf.into())
            .map_err(|_| Error::Key("AES-GCM encryption failed".into()))?;
        Ok(tag.into())
    }

    /// Decrypts `buf` in place, checking `tag`. False when the tag does not match.
    pub(crate) fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        self.0.decrypt_inout_detached(&Nonce::from(*nonce), aad, buf.into(), &Tag::from(*tag)).is_ok()
    }
}
