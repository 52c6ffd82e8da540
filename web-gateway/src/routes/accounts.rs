//! `/api/signup`, `/api/signin`, `/api/signout`, `/api/account`: customer accounts over
//! HTTP, with the session in a cookie ([`crate::session`]).
//!
//! Sign-up is a shop write (to the primary; not retried, it is not idempotent: a retry
//! after a lost reply would answer 409). Sign-out is a shop write too: it ends every
//! session of the account on the shops, then clears the cookie. Sign-in and the account read are reads (any shop;
//! both shops verify the same tokens). Errors map like every shop call: a taken username
//! `409`, a wrong password or missing session `401`, bad input `400`.

use axum::{
    extract::State,
    http::{header::SET_COOKIE, HeaderMap, StatusCode},
    Json,
};
use concord::pb::shop::v1 as pb;

use crate::{
    backends::{Access, CallContext},
    dto::{Credentials, SignedIn},
    error::{Error, ErrorBody},
    extract::ApiJson,
    routes::shop::{must, shop_call},
    session,
    state::AppState,
};

/// The reply of a successful sign-up or sign-in: the account and the session cookie.
fn signed_in(
    state: &AppState,
    account: Option<pb::Account>,
    session: Option<pb::Session>,
) -> Result<(HeaderMap, Json<SignedIn>), Error> {
    let account = must(account, "account")?;
    let session = must(session, "session")?;
    let cookie = session::set_cookie(
        &session.token,
        session.expires_at_unix_ms,
        state.secure_cookies,
    )
    .ok_or_else(|| {
        Error::Backend(tonic::Status::internal(
            "shop session token is not a valid cookie",
        ))
    })?;
    let mut headers = HeaderMap::new();
    headers.insert(SET_COOKIE, cookie);
    Ok((
        headers,
        Json(SignedIn {
            account,
            expires_at_unix_ms: session.expires_at_unix_ms,
        }),
    ))
}

/// Creates an account and signs it in (session cookie set).
#[utoipa::path(post, path = "/api/signup", tag = "accounts", request_body = Credentials,
    responses((status = 201, body = SignedIn, description = "Created and signed in; `Set-Cookie: concord_session=…; HttpOnly; SameSite=Strict`"),
        (status = 409, body = ErrorBody, description = "Username taken"),
        (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn sign_up(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, HeaderMap, Json<SignedIn>), Error> {
    let message = pb::SignUpRequest {
        username: body.username,
        password: body.password,
    };
    let reply = shop_call(&state, Access::Write, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.sign_up(request).await }
    })
    .await?;
    let (headers, json) = signed_in(&state, reply.account, reply.session)?;
    Ok((StatusCode::CREATED, headers, json))
}

/// Signs in (session cookie set).
#[utoipa::path(post, path = "/api/signin", tag = "accounts", request_body = Credentials,
    responses((status = 200, body = SignedIn, description = "Signed in; `Set-Cookie: concord_session=…; HttpOnly; SameSite=Strict`"),
        (status = 401, body = ErrorBody, description = "Wrong username or password"),
        (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn sign_in(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(HeaderMap, Json<SignedIn>), Error> {
    let message = pb::SignInRequest {
        username: body.username,
        password: body.password,
    };
    let reply = shop_call(&state, Access::Read, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.sign_in(request).await }
    })
    .await?;
    signed_in(&state, reply.account, reply.session)
}

/// Signs out: the shop ends every session of the account (the token is refused from then
/// on, also if it was copied), then the session cookie is cleared. Without a session, or
/// with one that is no longer valid, only the cookie is cleared. If the shop cannot be
/// reached the error is returned and the cookie kept, so the sign-out can be retried.
#[utoipa::path(post, path = "/api/signout", tag = "accounts",
    responses((status = 204, description = "Sessions ended and cookie cleared"), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn sign_out(
    State(state): State<AppState>,
    ctx: CallContext,
) -> Result<(StatusCode, HeaderMap), Error> {
    if ctx.bearer.is_some() {
        let ended = shop_call(&state, Access::Write, |mut c| {
            let request = ctx.request(pb::SignOutRequest {});
            async move { c.sign_out(request).await }
        })
        .await;
        match ended {
            Ok(_) => {}
            Err(Error::Backend(status)) if status.code() == tonic::Code::Unauthenticated => {}
            Err(e) => return Err(e),
        }
    }
    let mut headers = HeaderMap::new();
    if let Some(cookie) = session::clear_cookie(state.secure_cookies) {
        headers.insert(SET_COOKIE, cookie);
    }
    Ok((StatusCode::NO_CONTENT, headers))
}

/// The signed-in account (401 without a valid session).
#[utoipa::path(get, path = "/api/account", tag = "accounts",
    responses((status = 200, body = pb::Account), (status = 401, body = ErrorBody, description = "Not signed in"),
        (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn get_account(
    State(state): State<AppState>,
    ctx: CallContext,
) -> Result<Json<pb::Account>, Error> {
    let reply = shop_call(&state, Access::Read, |mut c| {
        let request = ctx.request(pb::GetAccountRequest {});
        async move { c.get_account(request).await }
    })
    .await?;
    Ok(Json(must(reply.account, "account")?))
}
