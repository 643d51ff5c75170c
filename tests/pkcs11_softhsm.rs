//! The PKCS#11 KEK provider against SoftHSM2 (Debian `softhsm2`, installed by `.ci/run`): the
//! test makes its own token in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use camvault_tests::{payload, test_config, FRAME_US, T0_US};
use storage_core::io::MemVfs;
use storage_core::keys::{DataKey, KekProvider, Pkcs11KekProvider};
use storage_core::{Clock, Codec, Env, Error, FrameIn, SimClock, Store};

const MODULES: [&str; 3] =
    ["/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"];

fn module() -> PathBuf {
    MODULES.iter().map(PathBuf::from).find(|p| p.exists()).expect("SoftHSM2 is not installed (apt-get install softhsm2; .ci/run does)")
}

fn token(dir: &Path) {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("tokens dir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(&conf, format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()))
        .expect("conf");
    // One test function per process touches the environment, before the module is loaded.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "camvault-test", "--pin", "1234", "--so-pin", "5678"])
        .output()
        .expect("run softhsm2-util");
    assert!(out.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kek_create_wrap_unwrap_destroy_and_a_store_on_the_hsm() {
    let dir = tempfile::tempdir().expect("tempdir");
    token(dir.path());
    let hsm = Arc::new(Pkcs11KekProvider::open(&module(), "camvault-test", "1234", "camvault-kek-").expect("open token"));

    // A store whose KEKs live in the HSM: a sweep rotates to a new HSM KEK and destroys the old.
    let vfs = MemVfs::new();
    let clock = Arc::new(SimClock::new(T0_US));
    let c: Arc<dyn Clock> = clock.clone();
    let provider: Arc<dyn KekProvider> = hsm.clone();
    let store = Store::open_with(test_config(), Env { vfs: Arc::new(vfs.clone()), clock: c, kek: Some(provider) }).expect("open store");
    let first_kek = hsm.list_keks().expect("list");
    assert_eq!(first_kek.len(), 1);
    // KEK lifecycle, on the provider the store bound to itself.
    let kek = hsm.create_kek().expect("create");
    assert_eq!(hsm.list_keks().expect("list"), vec![first_kek[0], kek]);
    let dk = DataKey::generate().expect("key");
    let wrapped = hsm.wrap(kek, &dk, b"aad-1").expect("wrap");
    assert_eq!(wrapped.len(), 60);
    assert!(!wrapped.windows(32).any(|w| w == dk.expose()), "the wrapped key is not the key");
    assert_eq!(hsm.unwrap(kek, &wrapped, b"aad-1").expect("unwrap").expose(), dk.expose());
    assert!(hsm.unwrap(kek, &wrapped, b"aad-2").is_err(), "bound to its associated data");
    hsm.destroy_kek(kek).expect("destroy");
    let err = hsm.unwrap(kek, &wrapped, b"aad-1").expect_err("destroyed");
    assert!(matches!(err, Error::Key(_)), "{err}");
    assert_eq!(hsm.list_keks().expect("list"), first_kek);

    let mut s = store.open_stream("cam-hsm", Codec::H264, b"cfg").expect("stream");
    for n in 0..100u64 {
        let key = n.is_multiple_of(25);
        s.append(FrameIn { ts_us: T0_US + n as i64 * FRAME_US, pts_90k: None, key, payload: &payload("cam-hsm", n, key) }).expect("append");
    }
    s.close().expect("close");
    assert_eq!(camvault_tests::all_frames(&store, "cam-hsm").len(), 100);
    clock.set_us(T0_US + 31 * 86_400_000_000);
    let report = store.sweep().expect("sweep");
    assert!(report.erased() >= 1);
    let now_keks = hsm.list_keks().expect("list");
    assert_eq!(now_keks.len(), 1);
    assert_ne!(now_keks, first_kek, "the old KEK object was destroyed in the HSM");
    assert_eq!(report.receipts[0].kek_destroyed, first_kek[0].0);

    // The provider is bound to this store: another store cannot use it.
    let other = test_config();
    let err = Store::open_with(other, Env { vfs: Arc::new(MemVfs::new()), clock: clock.clone(), kek: Some(hsm.clone()) })
        .map(|_| ())
        .expect_err("a provider bound to another store");
    assert!(matches!(err, Error::Identity(_)), "{err}");
}
