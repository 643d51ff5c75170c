//! The digest an export's signed manifest gives of the file: BLAKE3 by default, SHA-256 on
//! request.
//!
//! Why BLAKE3 by default: the digest is computed over every byte of the MP4 as it streams, and
//! SHA-256 (2.0 GiB/s on one core here, with SHA-NI) cost as much CPU as reading, decrypting
//! and muxing the clip together; BLAKE3 runs at 8-10 GiB/s on one core (criterion,
//! `encrypt/export_digest_*`). Both are checked with standard tools (`b3sum`, Debian package
//! b3sum; `sha256sum`, coreutils). Agencies whose procedures name SHA-256 ask for it per export.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Bytes read at a time when verifying a file (the file is never held whole in memory).
const VERIFY_READ_BYTES: usize = 1 << 20;

/// Which digest a manifest carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// BLAKE3-256 (the default).
    Blake3,
    /// SHA-256 (FIPS 180-4).
    Sha256,
}

impl DigestAlgorithm {
    /// The name in requests and manifests; the empty string asks for the default.
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "" | "blake3" => Ok(Self::Blake3),
            "sha256" => Ok(Self::Sha256),
            other => Err(format!("unknown digest algorithm {other:?}: \"blake3\" (the default) or \"sha256\"")),
        }
    }

    /// The name written in manifests and audit entries.
    pub fn name(self) -> &'static str {
        match self {
            Self::Blake3 => "blake3",
            Self::Sha256 => "sha256",
        }
    }

    /// Whether digesting a file costs more CPU than reading, decrypting and muxing it (an
    /// export then digests on a thread of its own; see `server::ExportSink`).
    pub fn costs_more_than_muxing(self) -> bool {
        match self {
            Self::Blake3 => false,
            Self::Sha256 => true,
        }
    }

    /// A hasher of this algorithm.
    pub fn hasher(self) -> FileHasher {
        match self {
            Self::Blake3 => FileHasher::Blake3(Box::new(blake3::Hasher::new())),
            Self::Sha256 => FileHasher::Sha256(Sha256::new()),
        }
    }

    /// Hex digest of a file, read in 1 MiB pieces.
    pub fn file_hex(self, path: &Path) -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = self.hasher();
        let mut buf = vec![0u8; VERIFY_READ_BYTES];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return Ok(hasher.finalize_hex()),
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// An incremental digest of one file.
pub enum FileHasher {
    /// BLAKE3 (boxed: its state is about 2 KiB).
    Blake3(Box<blake3::Hasher>),
    /// SHA-256.
    Sha256(Sha256),
}

impl FileHasher {
    /// Adds the next bytes of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Blake3(h) => {
                h.update(bytes);
            }
            Self::Sha256(h) => h.update(bytes),
        }
    }

    /// The digest of everything added, as lowercase hex (what `b3sum` and `sha256sum` print).
    pub fn finalize_hex(self) -> String {
        match self {
            Self::Blake3(h) => h.finalize().to_hex().to_string(),
            Self::Sha256(h) => storage_core::signing::hex(&h.finalize()),
        }
    }
}

/// The algorithm and hex digest a signed manifest states for its file: version 2 names both
/// (`digest_algorithm`, `file_digest`); version 1 manifests carried `file_sha256`.
pub fn stated_digest(manifest: &serde_json::Value) -> Result<(DigestAlgorithm, String), String> {
    if let Some(hex) = manifest["file_sha256"].as_str() {
        return Ok((DigestAlgorithm::Sha256, hex.to_string()));
    }
    let alg = manifest["digest_algorithm"].as_str().ok_or("the manifest names no digest algorithm")?;
    if alg.is_empty() {
        return Err("the manifest's digest algorithm is empty".into());
    }
    let hex = manifest["file_digest"].as_str().ok_or("the manifest states no file digest")?;
    Ok((DigestAlgorithm::parse(alg)?, hex.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published test vectors: the digests of "abc".
    #[test]
    fn digests_match_published_vectors_whatever_the_piece_boundaries() {
        for (alg, want) in [
            (DigestAlgorithm::Sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (DigestAlgorithm::Blake3, "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"),
        ] {
            let mut whole = alg.hasher();
            whole.update(b"abc");
            assert_eq!(whole.finalize_hex(), want, "{alg:?}");
            let mut pieces = alg.hasher();
            for b in b"abc" {
                pieces.update(std::slice::from_ref(b));
            }
            assert_eq!(pieces.finalize_hex(), want, "{alg:?} in pieces");
        }
    }

    #[test]
    fn file_digest_reads_past_the_first_piece() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..VERIFY_READ_BYTES * 2 + 7).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &bytes).expect("write");
        for alg in [DigestAlgorithm::Blake3, DigestAlgorithm::Sha256] {
            let mut h = alg.hasher();
            h.update(&bytes);
            assert_eq!(alg.file_hex(&path).expect("read"), h.finalize_hex(), "{alg:?}");
        }
        let mut short = DigestAlgorithm::Blake3.hasher();
        short.update(&bytes[..VERIFY_READ_BYTES]);
        assert_ne!(DigestAlgorithm::Blake3.file_hex(&path).expect("read"), short.finalize_hex());
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        assert_eq!(DigestAlgorithm::parse(""), Ok(DigestAlgorithm::Blake3));
        for alg in [DigestAlgorithm::Blake3, DigestAlgorithm::Sha256] {
            assert_eq!(DigestAlgorithm::parse(alg.name()), Ok(alg));
        }
        for bad in ["md5", "SHA256", "sha-256", "blake2b"] {
            assert!(DigestAlgorithm::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_1_and_version_2_manifests_state_their_digest() {
        let v1 = serde_json::json!({ "version": 1, "file_sha256": "aa" });
        assert_eq!(stated_digest(&v1), Ok((DigestAlgorithm::Sha256, "aa".to_string())));
        let v2 = serde_json::json!({ "version": 2, "digest_algorithm": "blake3", "file_digest": "bb" });
        assert_eq!(stated_digest(&v2), Ok((DigestAlgorithm::Blake3, "bb".to_string())));
        let v2_sha = serde_json::json!({ "version": 2, "digest_algorithm": "sha256", "file_digest": "cc" });
        assert_eq!(stated_digest(&v2_sha), Ok((DigestAlgorithm::Sha256, "cc".to_string())));
        // A manifest that names no algorithm, an empty or unknown one, or no digest is refused
        // rather than read as the default.
        for bad in [
            serde_json::json!({ "version": 2, "file_digest": "bb" }),
            serde_json::json!({ "version": 2, "digest_algorithm": "", "file_digest": "bb" }),
            serde_json::json!({ "version": 2, "digest_algorithm": "md5", "file_digest": "bb" }),
            serde_json::json!({ "version": 2, "digest_algorithm": "blake3" }),
        ] {
            assert!(stated_digest(&bad).is_err(), "{bad}");
        }
    }
}
