//! Customer accounts: who owns a cart and an order.
//!
//! An account is stored like every other write, through the store's one write path: a
//! sign-up is a [`WriteOp`] that puts the account under a fresh [`UserId`] in `accounts` and
//! its lower-cased username in `usernames`, in one WAL entry, so it replicates, survives
//! failover and is replayed after a crash exactly like an order. The username index makes
//! names unique regardless of case (`Alice` and `alice` are one account): a second sign-up
//! for a taken name is `AlreadyExists` and writes nothing, also when both are in the same
//! commit batch (the second sees the first's pending put).
//!
//! User ids come from a replicated counter that never reissues an id, not even after an
//! async failover lost the old primary's tail: a session token for a lost account names an
//! id nobody else will ever get, so it cannot open someone else's cart.
//!
//! The stored password is only its Argon2id PHC string (see `password`); the hash is made
//! before the write is queued, so the writer thread never hashes.
//!
//! **Sign-out** raises the account's `session_generation` (a write like any other, so it
//! replicates and survives failover); session tokens carry the generation they were issued
//! under and the shop accepts one only while it is the account's current generation
//! (`session`, `service`). So signing out ends every session of the account at once, on
//! both shops. Non-goals: renaming, deleting accounts, password change or reset, ending
//! one session but not the others.

use serde::{Deserialize, Serialize};

use crate::codec::Record;
use crate::error::{Result, ShopError};
use crate::keys::{self, UserId, LAST_USER_ID};
#[cfg(test)]
use crate::store::Committed;
use crate::store::{Store, Tx, WriteOp};
use crate::validate;
use crate::wal::TreeName;

/// A customer account as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The account's id: the `user_id` of its carts and orders.
    pub id: UserId,
    /// The name it signed up with (case kept; unique regardless of case).
    pub username: String,
    /// Argon2id PHC string (algorithm, parameters, salt, hash); never the password.
    pub password_hash: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Raised by every sign-out; sessions of an older generation are refused.
    #[serde(default)]
    pub session_generation: u64,
}

/// Redacts the password hash: accounts end up in debug logs and panics.
impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("created_at_ms", &self.created_at_ms)
            .field("session_generation", &self.session_generation)
            .finish()
    }
}

/// Creates an account in its own transaction (tests; the shop queues `sign_up_op`).
#[cfg(test)]
pub fn sign_up(store: &Store, username: &str, password_hash: &str) -> Result<Committed<Account>> {
    store.transact(sign_up_op(username.to_string(), password_hash.to_string())?)
}

/// Validates a sign-up whose password is already hashed; the returned write stores it.
pub fn sign_up_op(username: String, password_hash: String) -> Result<impl WriteOp<Account>> {
    validate::username(&username)?;
    let name_key = keys::username_key(&username);
    Ok(move |tx: &Tx<'_>| {
        if tx.get(TreeName::Usernames, &name_key)?.is_some() {
            return Err(ShopError::AlreadyExists(format!(
                "username {} is taken",
                concord::error::quote(&username)
            ))
            .into());
        }
        let account = Account {
            id: UserId(tx.next_id(LAST_USER_ID)?),
            username: username.clone(),
            password_hash: password_hash.clone(),
            created_at_ms: tx.now_ms(),
            session_generation: 0,
        };
        tx.put(TreeName::Usernames, &name_key, account.id.key().to_vec())?;
        tx.put_record(&account.id.key(), &account)?;
        Ok(account)
    })
}

/// Ends every session of `user`: its session generation goes up by one.
pub fn sign_out_op(user: UserId) -> impl WriteOp<Account> {
    move |tx: &Tx<'_>| {
        let Some(bytes) = tx.get(TreeName::Accounts, &user.key())? else {
            return Err(ShopError::Unauthenticated(
                "the session's account does not exist; sign up or sign in again".into(),
            )
            .into());
        };
        let mut account = Account::decode(&bytes)?;
        account.session_generation = account
            .session_generation
            .checked_add(1)
            .ok_or_else(|| ShopError::internal("session generation overflow"))?;
        tx.put_record(&user.key(), &account)?;
        Ok(account)
    }
}

/// The account with this id; `NotFound` when there is none.
pub fn get(store: &Store, id: UserId) -> Result<Account> {
    match store.tree(TreeName::Accounts).get(id.key())? {
        Some(bytes) => Account::decode(&bytes),
        None => Err(ShopError::not_found(format!("account {id} does not exist"))),
    }
}

/// The account signed up under `username` (any case), if any. A malformed name is simply
/// nobody: sign-in must not tell a malformed name from an unknown one.
pub fn find_by_username(store: &Store, username: &str) -> Result<Option<Account>> {
    if validate::username(username).is_err() {
        return Ok(None);
    }
    let Some(raw) = store
        .tree(TreeName::Usernames)
        .get(keys::username_key(username))?
    else {
        return Ok(None);
    };
    get(store, UserId::from_key(&raw)?).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test::temp_store;

    /// Sign-up stores the account and its name index; names are unique regardless of
    /// case; ids are never reused; bad names are refused before anything is written.
    #[test]
    fn sign_up_table() {
        let (_dir, store) = temp_store();
        let ann = sign_up(&store, "Ann", "$argon2id$fake")
            .unwrap()
            .durable_blocking()
            .unwrap();
        assert_eq!(ann.value.id, UserId(1));
        assert_eq!(get(&store, UserId(1)).unwrap(), ann.value);
        assert_eq!(find_by_username(&store, "aNN").unwrap(), Some(ann.value));
        for taken in ["Ann", "ann", "ANN"] {
            assert!(
                matches!(
                    sign_up(&store, taken, "$argon2id$x"),
                    Err(ShopError::AlreadyExists(_))
                ),
                "{taken}"
            );
        }
        for bad in ["an", "ann lee", "ann\0", ""] {
            assert!(
                matches!(
                    sign_up(&store, bad, "h"),
                    Err(ShopError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        let bob = sign_up(&store, "bob", "h").unwrap().value;
        assert_eq!(bob.id, UserId(2));
        assert_eq!(find_by_username(&store, "nobody").unwrap(), None);
        assert_eq!(find_by_username(&store, "no body").unwrap(), None);
        assert!(matches!(
            get(&store, UserId(99)),
            Err(ShopError::NotFound(_))
        ));
        assert!(!format!("{bob:?}").contains("\"h\""));
    }

    /// Sign-out raises the generation by one each time and touches nothing else; an
    /// unknown account is refused and nothing is written.
    #[test]
    fn sign_out_raises_the_generation() {
        let (_dir, store) = temp_store();
        let ann = sign_up(&store, "ann", "h").unwrap().value;
        assert_eq!(ann.session_generation, 0);
        for expected in 1..=2 {
            let out = store.transact(sign_out_op(ann.id)).unwrap().value;
            assert_eq!(out.session_generation, expected);
            assert_eq!(get(&store, ann.id).unwrap(), out);
        }
        let unchanged = Account {
            session_generation: 2,
            ..ann
        };
        assert_eq!(get(&store, unchanged.id).unwrap(), unchanged);
        let lsn = store.last_lsn().unwrap();
        assert!(matches!(
            store.transact(sign_out_op(UserId(99))),
            Err(ShopError::Unauthenticated(_))
        ));
        assert_eq!(store.last_lsn().unwrap(), lsn);
    }
}
