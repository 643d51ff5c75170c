//! A KEK provider for hardware security modules over PKCS#11 (`cryptoki`), tested against
//! SoftHSM2. KEKs are AES-256 token objects that never leave the module (sensitive, not
//! extractable); wrapping is AES-GCM inside the module; destroying a KEK is `C_DestroyObject`.

use std::path::Path;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use crate::keys::{random_bytes, DataKey, KekId, KekProvider};
use crate::{Error, Result, StoreId};

/// KEKs as AES-256 objects labelled `<prefix><store id>-<id as 16 hex digits>` on one token,
/// so several stores can share a token and one never lists, uses or destroys another's KEKs.
pub struct Pkcs11KekProvider {
    // Field order matters: the session closes before the library is finalised.
    session: Mutex<Session>,
    _ctx: Pkcs11,
    prefix: String,
    /// `<prefix><store id>-`, set once by [`KekProvider::bind_store`].
    store_prefix: std::sync::OnceLock<String>,
}

fn err(what: &str) -> impl Fn(cryptoki::error::Error) -> Error + '_ {
    move |e| Error::Key(format!("PKCS#11 {what}: {e}"))
}

impl Pkcs11KekProvider {
    /// Loads `module` (e.g. `/usr/lib/softhsm/libsofthsm2.so`), finds the token labelled
    /// `token_label`, opens a read-write session and logs in as the user with `pin`. KEK labels
    /// start with `label_prefix`, so several stores can share a token.
    pub fn open(module: &Path, token_label: &str, pin: &str, label_prefix: &str) -> Result<Self> {
        let ctx = Pkcs11::new(module).map_err(err("load module"))?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).map_err(err("initialize"))?;
        let mut found = None;
        for slot in ctx.get_slots_with_token().map_err(err("list slots"))? {
            let info = ctx.get_token_info(slot).map_err(err("token info"))?;
            if info.label().trim() == token_label {
                found = Some(slot);
                break;
            }
        }
        let slot = found.ok_or_else(|| Error::Key(format!("no PKCS#11 token labelled {token_label:?}")))?;
        let session = ctx.open_rw_session(slot).map_err(err("open session"))?;
        session.login(UserType::User, Some(&AuthPin::new(pin.into()))).map_err(err("login"))?;
        Ok(Pkcs11KekProvider {
            session: Mutex::new(session),
            _ctx: ctx,
            prefix: label_prefix.to_string(),
            store_prefix: std::sync::OnceLock::new(),
        })
    }

    fn store_prefix(&self) -> Result<&str> {
        self.store_prefix.get().map(String::as_str).ok_or_else(|| Error::Key("PKCS#11 provider used before it was bound to a store".into()))
    }

    fn label(&self, id: KekId) -> Result<Vec<u8>> {
        Ok(format!("{}{:016x}", self.store_prefix()?, id.0).into_bytes())
    }

    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>> {
        self.session.lock().map_err(|_| Error::Key("PKCS#11 session lock poisoned".into()))
    }

    fn handle(&self, s: &Session, id: KekId) -> Result<ObjectHandle> {
        let found =
            s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(self.label(id)?)]).map_err(err("find KEK"))?;
        found.into_iter().next().ok_or_else(|| Error::Key(format!("KEK {} is not held (destroyed or never created)", id.0)))
    }
}

impl KekProvider for Pkcs11KekProvider {
    fn bind_store(&self, store: StoreId) -> Result<()> {
        let want = format!("{}{store}-", self.prefix);
        match self.store_prefix.get() {
            Some(p) if *p != want => Err(Error::Identity(format!("PKCS#11 provider already bound to another store ({p})"))),
            Some(_) => Ok(()),
            None => {
                let _ = self.store_prefix.set(want);
                Ok(())
            }
        }
    }

    fn create_kek(&self) -> Result<KekId> {
        let next = self.list_keks()?.last().map_or(1, |k| k.0 + 1);
        let id = KekId(next);
        let s = self.session()?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Label(self.label(id)?),
        ];
        s.generate_key(&Mechanism::AesKeyGen, &template).map_err(err("generate KEK"))?;
        Ok(id)
    }

    fn wrap(&self, kek: KekId, key: &DataKey, aad: &[u8]) -> Result<Vec<u8>> {
        let s = self.session()?;
        let h = self.handle(&s, kek)?;
        let mut iv = [0u8; 12];
        random_bytes(&mut iv)?;
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, aad, 128.into()).map_err(err("GCM parameters"))?;
        let ct = s.encrypt(&Mechanism::AesGcm(params), h, key.expose()).map_err(err("wrap"))?;
        let mut out = iv.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unwrap(&self, kek: KekId, wrapped: &[u8], aad: &[u8]) -> Result<DataKey> {
        if wrapped.len() != 12 + 32 + 16 {
            return Err(Error::Key(format!("wrapped key has {} bytes, expected 60", wrapped.len())));
        }
        let s = self.session()?;
        let h = self.handle(&s, kek)?;
        let mut iv = [0u8; 12];
        iv.copy_from_slice(&wrapped[..12]);
        let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(err("GCM parameters"))?;
        let mut plain = s.decrypt(&Mechanism::AesGcm(params), h, &wrapped[12..]).map_err(err("unwrap"))?;
        if plain.len() != 32 {
            zeroize::Zeroize::zeroize(&mut plain);
            return Err(Error::Key("unwrapped key has the wrong length".into()));
        }
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&plain);
        zeroize::Zeroize::zeroize(&mut plain);
        let k = DataKey::from_bytes(raw);
        zeroize::Zeroize::zeroize(&mut raw);
        Ok(k)
    }

    fn destroy_kek(&self, kek: KekId) -> Result<()> {
        let s = self.session()?;
        let h = self.handle(&s, kek)?;
        s.destroy_object(h).map_err(err("destroy KEK"))
    }

    fn list_keks(&self) -> Result<Vec<KekId>> {
        let prefix = self.store_prefix()?;
        let s = self.session()?;
        let handles = s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Token(true)]).map_err(err("list KEKs"))?;
        let mut ids = Vec::new();
        for h in handles {
            for a in s.get_attributes(h, &[AttributeType::Label]).map_err(err("read label"))? {
                if let Attribute::Label(l) = a {
                    let label = String::from_utf8_lossy(&l).to_string();
                    if let Some(id) = label.strip_prefix(prefix).and_then(|hex| u64::from_str_radix(hex, 16).ok()) {
                        ids.push(KekId(id));
                    }
                }
            }
        }
        ids.sort();
        Ok(ids)
    }
}
