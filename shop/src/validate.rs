//! Input limits and validators shared by the catalogue, carts and orders.
//!
//! Every limit is a named constant so that the proto comments, the README and the tests
//! quote the same numbers. Validators run before any storage access: a rejected request
//! changes nothing. They never panic, whatever the input (control characters, huge
//! numbers, empty strings). Non-UTF-8 input cannot reach them: every text field is a
//! proto `string`, which tonic refuses to decode unless it is valid UTF-8 (the refusal is
//! an `INVALID_ARGUMENT`, see `concord::grpc_utf8`).
//!
//! Display text (names, descriptions, filters) may hold any printable Unicode but no
//! control characters (`Cc`) and no invisible direction controls — the bidi embeddings,
//! overrides and isolates U+202A–U+202E and U+2066–U+2069, the marks U+200E/U+200F and
//! U+061C — which can make a name render as something else than it is ("Trojan Source").
//! The refusal names the field and the code point. Currencies are active ISO 4217 codes
//! (the `iso_currency` crate's table), not just three letters.
//!
//! The arithmetic limits are chosen so that no total can overflow `i64`:
//! `MAX_PRICE_MINOR × MAX_LINE_QUANTITY × MAX_CART_LINES` = 10¹¹ · 10⁴ · 10² = 10¹⁷ < 2⁶³;
//! totals still use checked arithmetic.

use concord::error::quote;
use iso_currency::Currency;

use crate::error::{Result, ShopError};

/// Longest product name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest product description, in characters (it may be empty).
pub const MAX_DESCRIPTION_CHARS: usize = 2_000;
/// Highest unit price in minor units (10¹¹ = one billion major units); above is "absurd".
pub const MAX_PRICE_MINOR: i64 = 100_000_000_000;
/// Highest stock level of one product.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Highest quantity of one product in one cart line.
pub const MAX_LINE_QUANTITY: i64 = 10_000;
/// Most distinct products in one cart.
pub const MAX_CART_LINES: usize = 100;
/// Longest user id, in bytes (ASCII letters, digits and `-_.@`).
pub const MAX_USER_ID_BYTES: usize = 64;
/// Shortest username, in bytes.
pub const MIN_USERNAME_BYTES: usize = 3;
/// Longest username, in bytes (the user id alphabet: ASCII letters, digits and `-_.@`).
pub const MAX_USERNAME_BYTES: usize = 64;
/// Shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in characters: bounds the hashing work one request can ask for.
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Longest replica id a `Replicate` stream may introduce itself with, in characters.
pub const MAX_REPLICA_ID_CHARS: usize = 64;
/// Longest idempotency key, in bytes (printable ASCII, no spaces).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Page size used when the request asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page a list call returns; bigger requests are clamped, not rejected.
pub const MAX_PAGE_SIZE: usize = 500;
/// Most products one filtered ListProducts call examines; bounds its latency whatever the
/// catalogue size (a filtered page may come back short, with a token to continue).
pub const MAX_SCAN_PER_PAGE: usize = 5_000;
/// Currency used when a create request leaves it empty.
pub const DEFAULT_CURRENCY: &str = "EUR";
/// Longest `name_contains` filter, in characters.
pub const MAX_FILTER_CHARS: usize = MAX_NAME_CHARS;

/// Whether `c` may not appear in display text: a control character (`Cc`) or an
/// invisible bidirectional formatting character (see the module doc).
pub fn is_forbidden_in_text(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
        )
}

/// Checks a display string: non-blank, at most `max_chars`, no control or bidi
/// formatting characters.
fn text(field: &str, value: &str, max_chars: usize, allow_empty: bool) -> Result<()> {
    if !allow_empty && value.trim().is_empty() {
        return Err(ShopError::invalid(format!("{field} must not be empty")));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(ShopError::invalid(format!(
            "{field} is {chars} characters long; the limit is {max_chars}"
        )));
    }
    if let Some((at, c)) = value.char_indices().find(|(_, c)| is_forbidden_in_text(*c)) {
        let kind = if c.is_control() {
            "control"
        } else {
            "bidirectional formatting"
        };
        return Err(ShopError::invalid(format!(
            "{field} contains {kind} character U+{:04X} at byte {at}",
            c as u32
        )));
    }
    Ok(())
}

/// Validates a product name.
pub fn name(value: &str) -> Result<()> {
    text("name", value, MAX_NAME_CHARS, false)
}

/// Validates a product description (empty allowed).
pub fn description(value: &str) -> Result<()> {
    text("description", value, MAX_DESCRIPTION_CHARS, true)
}

/// Validates a `name_contains` filter (empty means "no filter").
pub fn name_filter(value: &str) -> Result<()> {
    text("name filter", value, MAX_FILTER_CHARS, true)
}

/// Validates a unit price in minor units.
pub fn price_minor(value: i64) -> Result<i64> {
    if value < 0 {
        return Err(ShopError::invalid(format!("price {value} is negative")));
    }
    if value > MAX_PRICE_MINOR {
        return Err(ShopError::invalid(format!(
            "price {value} exceeds the limit of {MAX_PRICE_MINOR} minor units"
        )));
    }
    Ok(value)
}

/// Validates a currency: an active ISO 4217 code, upper case. Codes that are not money
/// (`XXX` "no currency", `XTS` testing, precious metals, `XDR`) and withdrawn codes (the
/// error names the successor, e.g. `HRK` → `EUR`) are refused.
pub fn currency(value: &str) -> Result<()> {
    let known = (value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()))
        .then(|| Currency::from_code(value))
        .flatten();
    match known {
        None => Err(ShopError::invalid(format!(
            "currency {} is not an ISO 4217 code (three upper-case letters, e.g. \"EUR\")",
            quote(value)
        ))),
        Some(code) if code.is_special() => Err(ShopError::invalid(format!(
            "currency {value} ({}) is not a currency products can be priced in",
            code.name()
        ))),
        Some(code) => match code.is_superseded() {
            Some(successor) => Err(ShopError::invalid(format!(
                "currency {value} ({}) is withdrawn; use {}",
                code.name(),
                successor.code()
            ))),
            None => Ok(()),
        },
    }
}

/// Validates a stock level and converts it to the stored type.
pub fn stock(value: i64) -> Result<u64> {
    if value < 0 {
        return Err(ShopError::invalid(format!("stock {value} is negative")));
    }
    if value > MAX_STOCK {
        return Err(ShopError::invalid(format!(
            "stock {value} exceeds the limit of {MAX_STOCK}"
        )));
    }
    Ok(value as u64)
}

/// Validates a cart quantity: 1..=MAX_LINE_QUANTITY (use remove, not 0, to drop a line).
pub fn quantity(value: i64) -> Result<u32> {
    if value <= 0 {
        return Err(ShopError::invalid(format!(
            "quantity {value} must be at least 1"
        )));
    }
    if value > MAX_LINE_QUANTITY {
        return Err(ShopError::invalid(format!(
            "quantity {value} exceeds the per-line limit of {MAX_LINE_QUANTITY}"
        )));
    }
    Ok(value as u32)
}

/// Validates a user id. Ids become sled key prefixes, so the alphabet excludes the 0x00
/// separator and anything ambiguous.
pub fn user_id(value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(ShopError::invalid("user id must not be empty"));
    }
    if value.len() > MAX_USER_ID_BYTES {
        return Err(ShopError::invalid(format!(
            "user id is {} bytes long; the limit is {MAX_USER_ID_BYTES}",
            value.len()
        )));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return Err(ShopError::invalid(format!(
            "user id {} may only contain ASCII letters, digits and -_.@",
            quote(value)
        )));
    }
    Ok(())
}

/// Validates a username: the user id alphabet (no 0x00, nothing ambiguous), at least
/// [`MIN_USERNAME_BYTES`] long.
pub fn username(value: &str) -> Result<()> {
    if value.len() < MIN_USERNAME_BYTES || value.len() > MAX_USERNAME_BYTES {
        return Err(ShopError::invalid(format!(
            "username must be {MIN_USERNAME_BYTES}..={MAX_USERNAME_BYTES} characters long"
        )));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return Err(ShopError::invalid(format!(
            "username {} may only contain ASCII letters, digits and -_.@",
            quote(value)
        )));
    }
    Ok(())
}

/// Validates a new password's length (any characters; never quoted back, never logged).
pub fn password(value: &str) -> Result<()> {
    let chars = value.chars().count();
    if !(MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&chars) {
        return Err(ShopError::invalid(format!(
            "password must be {MIN_PASSWORD_CHARS}..={MAX_PASSWORD_CHARS} characters long \
             (it has {chars})"
        )));
    }
    Ok(())
}

/// Validates the id a replica introduces itself with (logged, so bounded).
pub fn replica_id(value: &str) -> Result<()> {
    text("replica id", value, MAX_REPLICA_ID_CHARS, true)
}

/// Validates a client-chosen idempotency key.
pub fn idempotency_key(value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(ShopError::invalid("idempotency key must not be empty"));
    }
    if value.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(ShopError::invalid(format!(
            "idempotency key is {} bytes long; the limit is {MAX_IDEMPOTENCY_KEY_BYTES}",
            value.len()
        )));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ShopError::invalid(
            "idempotency key may only contain printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// Turns a requested page size into the effective one (0 → default, clamp to max).
pub fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every validator accepts the boundary and rejects just past it.
    #[test]
    fn limits_table() {
        let long = "x".repeat(MAX_NAME_CHARS);
        let too_long = "x".repeat(MAX_NAME_CHARS + 1);
        let cases: Vec<(&str, Result<()>, bool)> = vec![
            ("name ok", name("Tea pot"), true),
            ("name unicode", name("Thé vert 緑茶"), true),
            ("name at limit", name(&long), true),
            ("name over limit", name(&too_long), false),
            ("name empty", name(""), false),
            ("name blank", name("   "), false),
            ("name newline", name("a\nb"), false),
            ("name nul", name("a\0b"), false),
            ("name del", name("a\u{7f}"), false),
            ("description empty", description(""), true),
            ("price zero", price_minor(0).map(drop), true),
            ("price max", price_minor(MAX_PRICE_MINOR).map(drop), true),
            ("price negative", price_minor(-1).map(drop), false),
            ("price absurd", price_minor(i64::MAX).map(drop), false),
            ("username ok", username("ann.lee@example"), true),
            ("username short", username("an"), false),
            (
                "username long",
                username(&"a".repeat(MAX_USERNAME_BYTES + 1)),
                false,
            ),
            ("username space", username("ann lee"), false),
            ("username nul", username("ann\0x"), false),
            (
                "password min",
                password(&"p".repeat(MIN_PASSWORD_CHARS)),
                true,
            ),
            ("password unicode", password("ünïcödé€"), true),
            ("password short", password("1234567"), false),
            (
                "password long",
                password(&"p".repeat(MAX_PASSWORD_CHARS + 1)),
                false,
            ),
            ("currency EUR", currency("EUR"), true),
            ("currency USD", currency("USD"), true),
            ("currency JPY", currency("JPY"), true),
            ("currency XXQ", currency("XXQ"), false),
            ("currency XXX", currency("XXX"), false),
            ("currency XTS", currency("XTS"), false),
            ("currency gold", currency("XAU"), false),
            ("currency withdrawn", currency("HRK"), false),
            ("currency mixed", currency("Eur"), false),
            ("name bidi override", name("abc\u{202E}gpj.exe"), false),
            ("name bidi isolate", name("a\u{2066}b"), false),
            ("name lrm", name("a\u{200E}"), false),
            ("name rlm", name("a\u{200F}"), false),
            ("name arabic mark", name("a\u{061C}"), false),
            ("name embedding", name("\u{202A}a"), false),
            ("description pop", description("a\u{202C}"), false),
            ("description rtl text", description("שלום עולם"), true),
            ("description zwj emoji", description("👩\u{200D}💻"), true),
            ("filter bidi", name_filter("\u{2069}"), false),
            ("currency lower", currency("eur"), false),
            ("currency long", currency("EURO"), false),
            ("currency empty", currency(""), false),
            ("stock zero", stock(0).map(drop), true),
            ("stock negative", stock(-5).map(drop), false),
            ("stock huge", stock(MAX_STOCK + 1).map(drop), false),
            ("quantity one", quantity(1).map(drop), true),
            ("quantity zero", quantity(0).map(drop), false),
            ("quantity negative", quantity(-3).map(drop), false),
            ("quantity huge", quantity(i64::MAX).map(drop), false),
            ("user ok", user_id("alice@example.com"), true),
            ("user empty", user_id(""), false),
            ("user space", user_id("a b"), false),
            ("user nul", user_id("a\0"), false),
            ("user long", user_id(&"u".repeat(65)), false),
            ("key ok", idempotency_key("order-1"), true),
            ("key space", idempotency_key("a b"), false),
            ("key empty", idempotency_key(""), false),
        ];
        for (label, got, ok) in cases {
            assert_eq!(got.is_ok(), ok, "{label}: {got:?}");
            if let Err(e) = got {
                assert!(matches!(e, ShopError::InvalidArgument(_)), "{label}: {e:?}");
            }
        }
    }

    /// A refused character is named by its code point, and the field by its name.
    #[test]
    fn forbidden_characters_are_named() {
        let cases = [
            (
                name("Tea\u{202E}pot"),
                "name contains bidirectional formatting character U+202E at byte 3",
            ),
            (
                description("a\tb"),
                "description contains control character U+0009 at byte 1",
            ),
            (
                currency("HRK"),
                "currency HRK (Croatian kuna) is withdrawn; use EUR",
            ),
        ];
        for (got, want) in cases {
            match got {
                Err(ShopError::InvalidArgument(message)) => assert_eq!(message, want),
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    /// Page sizes default and clamp instead of failing.
    #[test]
    fn page_size_defaults_and_clamps() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(u32::MAX), MAX_PAGE_SIZE);
    }
}
