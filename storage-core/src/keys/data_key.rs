use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM};
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

/// A segment's AEAD (AES-256-GCM from `ring`).
///
/// `ring` does not zero its expanded key schedule on drop, so the key lives in a
/// `ManuallyDrop` and `Drop` overwrites its bytes instead. That is sound because ring's
/// AES-GCM key is plain inline data (round keys, GHASH table, a `&'static` algorithm): no
/// heap, no destructor to skip, and the value is never read after it is zeroed.
pub(crate) struct SegmentCipher(std::mem::ManuallyDrop<LessSafeKey>);

impl SegmentCipher {
    pub(crate) fn new(key: &DataKey) -> Self {
        // A 32-byte key is always valid for AES-256-GCM; ring refuses only a wrong length.
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose()).expect("a 32-byte AES-256 key");
        SegmentCipher(std::mem::ManuallyDrop::new(LessSafeKey::new(unbound)))
    }

    /// Encrypts `buf` in place; returns the 16-byte tag.
    pub(crate) fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<[u8; 16]> {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .map_err(|_| Error::Key("AES-GCM encryption failed".into()))?;
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `buf` in place, checking `tag`. False when the tag does not match; `buf`
    /// then holds no plaintext (ring zeroes nothing, but the caller discards the buffer).
    pub(crate) fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut [u8], tag: &[u8; 16]) -> bool {
        self.0.open_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), Tag::from(*tag), buf, 0..).is_ok()
    }
}

impl Drop for SegmentCipher {
    // The crate's one `unsafe`: zeroing a key schedule that the library gives no way to zero.
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let len = std::mem::size_of::<LessSafeKey>();
        let p = (&mut *self.0 as *mut LessSafeKey).cast::<u8>();
        // SAFETY: `p` points to `len` bytes owned by `self.0`, which is never used again
        // and never dropped (ManuallyDrop), so leaving it as zero bytes is not observed.
        for i in 0..len {
            unsafe { std::ptr::write_volatile(p.add(i), 0) };
        }
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NIST GCM test vector (gcmEncryptExtIV256, Count 0 with 128-bit PT and AAD): the
    /// on-disk format is AES-256-GCM itself, whichever library computes it.
    #[test]
    fn seal_matches_a_published_aes_256_gcm_vector_and_open_checks_the_tag() {
        let hex = |s: &str| (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect::<Vec<u8>>();
        let key: [u8; 32] = hex("92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b").try_into().expect("32");
        let nonce: [u8; 12] = hex("ac93a1a6145299bde902f21a").try_into().expect("12");
        let aad = hex("1e0889016f67601c8ebea4943bc23ad6");
        let pt = hex("2d71bcfa914e4ac045b2aa60955fad24");
        let cipher = SegmentCipher::new(&DataKey::from_bytes(key));
        let mut buf = pt.clone();
        let tag = cipher.seal(&nonce, &aad, &mut buf).expect("seal");
        assert_eq!(buf, hex("8995ae2e6df3dbf96fac7b7137bae67f"));
        assert_eq!(tag.to_vec(), hex("eca5aa77d51d4a0a14d9c51e1da474ab"));
        let mut bad = tag;
        bad[0] ^= 1;
        let mut copy = buf.clone();
        assert!(!cipher.open(&nonce, &aad, &mut copy, &bad));
        assert!(!cipher.open(&nonce, b"other aad", &mut buf.clone(), &tag));
        assert!(cipher.open(&nonce, &aad, &mut buf, &tag));
        assert_eq!(buf, pt);
    }
}
