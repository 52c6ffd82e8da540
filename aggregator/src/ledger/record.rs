//! How the ledger's records are stored in sled: one encoding for events, accounts and
//! the head, in this one place.

use serde::{de::DeserializeOwned, Serialize};

use super::error::LedgerError;
use super::event::Event;
use super::state::{Account, Head};

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, LedgerError> {
    serde_json::from_slice(bytes).map_err(|e| LedgerError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of integers, strings and enums: serialising cannot fail.
    serde_json::to_vec(value).expect("ledger records serialise to JSON")
}

/// A stored event.
pub fn decode_event(bytes: &[u8]) -> Result<Event, LedgerError> {
    decode("event", bytes)
}

/// An event as stored.
pub fn encode_event(e: &Event) -> Vec<u8> {
    encode(e)
}

/// A stored account.
pub fn decode_account(bytes: &[u8]) -> Result<Account, LedgerError> {
    decode("account", bytes)
}

/// An account as stored.
pub fn encode_account(a: &Account) -> Vec<u8> {
    encode(a)
}

/// The stored head.
pub fn decode_head(bytes: &[u8]) -> Result<Head, LedgerError> {
    decode("head", bytes)
}

/// The head as stored.
pub fn encode_head(h: &Head) -> Vec<u8> {
    encode(h)
}
