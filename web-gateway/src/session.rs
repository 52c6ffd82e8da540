//! The browser session: the shop's session token kept in a cookie.
//!
//! Sign-up and sign-in put the token in [`SESSION_COOKIE`]: `HttpOnly` (page scripts
//! cannot read it, so an injected script cannot carry it off), `SameSite=Strict` (a
//! browser sends it only with requests from the gateway's own pages), `Path=/`, `Max-Age`
//! = the token's remaining life, and `Secure` when the gateway is served over HTTPS
//! ([`crate::Config::secure_cookies`]; the gateway itself speaks HTTP, so that means behind
//! a TLS-terminating proxy). Every request then forwards the cookie to the shop as
//! `authorization: Bearer <token>` (an explicit `Authorization` header wins, for API
//! clients). Writes that ride on the cookie are additionally checked by the cross-site
//! rule of [`crate::edge::csrf_layer`], which covers every write route.
//!
//! The gateway does not read the token: the shop alone verifies it. Sign-out clears the
//! cookie; the token itself stays valid until it expires (the shop keeps no session table).

use axum::http::{header::COOKIE, HeaderMap, HeaderValue};
use cookie::{Cookie, SameSite};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "concord_session";

/// The session token of the request's cookie, if any.
pub fn from_headers(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == SESSION_COOKIE && !cookie.value().is_empty())
        .map(|cookie| cookie.value().to_owned())
}

/// `Set-Cookie` value holding `token` until `expires_at_unix_ms`.
pub fn set_cookie(token: &str, expires_at_unix_ms: i64, secure: bool) -> Option<HeaderValue> {
    let max_age_s = (expires_at_unix_ms.saturating_sub(concord::clock::unix_ms()) / 1000).max(0);
    build(token, max_age_s, secure)
}

/// `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie(secure: bool) -> Option<HeaderValue> {
    build("", 0, secure)
}

fn build(value: &str, max_age_s: i64, secure: bool) -> Option<HeaderValue> {
    let cookie = Cookie::build((SESSION_COOKIE, value))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(max_age_s))
        .build();
    // A JWT is base64url with dots: always a valid header value.
    HeaderValue::from_str(&cookie.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cookie carries every protective attribute; `Secure` only when asked.
    #[test]
    fn cookie_attributes() {
        let far = i64::MAX / 2;
        let plain = set_cookie("a.b.c", far, false).unwrap();
        let plain = plain.to_str().unwrap();
        assert!(plain.starts_with("concord_session=a.b.c"), "{plain}");
        for want in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
            assert!(plain.contains(want), "{want} in {plain}");
        }
        assert!(!plain.contains("Secure"), "{plain}");
        let secure = set_cookie("a.b.c", far, true).unwrap();
        assert!(secure.to_str().unwrap().contains("Secure"));
        let cleared = clear_cookie(false).unwrap();
        assert!(cleared.to_str().unwrap().contains("Max-Age=0"));
    }

    /// The token is found among other cookies; an empty one counts as none.
    #[test]
    fn reads_the_session_cookie() {
        let mut headers = HeaderMap::new();
        assert_eq!(from_headers(&headers), None);
        headers.insert(
            COOKIE,
            HeaderValue::from_static("theme=dark; concord_session=t.o.k"),
        );
        assert_eq!(from_headers(&headers).as_deref(), Some("t.o.k"));
        headers.insert(COOKIE, HeaderValue::from_static("concord_session="));
        assert_eq!(from_headers(&headers), None);
    }
}
