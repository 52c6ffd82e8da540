//! The `concord.shop.v1.Shop` gRPC service: convert the request, call the domain, convert
//! the reply. Nothing else lives here.
//!
//! Every write first asks the [`Replicator`] whether this process may accept writes (a
//! replica answers FAILED_PRECONDITION naming the primary), then runs on the domain, then
//! lets the replicator finish it (sync mode waits for the replica's ack) and reports the
//! outcome in `WriteInfo`. Product mutations and order status changes also need the admin
//! bearer token, checked before anything else: a customer may place and read orders, but
//! only the shop's operator may mark one paid, shipped or cancelled (restocking).
//!
//! Who the caller is ([`Caller`]) comes from the one `authorization: Bearer` entry: the
//! admin token (constant-time compare), else a session token (`session`) whose account
//! must exist. Cart and order calls then act only for that account:
//! - no token, or one that is forged, expired or names no account → UNAUTHENTICATED;
//! - a request `user_id` that is not the session's → PERMISSION_DENIED (empty = the
//!   session's own);
//! - someone else's order by id → NOT_FOUND with the same message as an unknown id. Why
//!   not PERMISSION_DENIED: order ids are sequential, so a distinct answer would let anyone
//!   with an account map which ids exist and when they were placed; NOT_FOUND tells a
//!   customer nothing about other customers.
//!
//! A customer write first asks whether this process takes writes, then checks the
//! session: a replica's refusal (which did nothing and names the primary) must not depend
//! on whether the account has reached the replica yet, so a client or the gateway can
//! follow it to the primary, which has the account.
//!
//! The admin token reads every cart and order (GetCart/ListOrders naming any user,
//! GetOrder, ListAllOrders) but changes no cart and places no order: those act for a
//! customer, who signs in.

use std::sync::Arc;

use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::shop_server::Shop as ShopApi;
use tonic::{Request, Response, Status};

use concord::error::quote;

use crate::catalog::{NewProduct, ProductPatch, ProductQuery};
use crate::convert;
use crate::error::ShopError;
use crate::keys::UserId;
use crate::password::Password;
use crate::replication::Replicator;
use crate::session::Sessions;
use crate::shop::Shop;
use crate::store::Written;

/// Reply metadata of every read: the LSN applied to the data before the read ran, so the
/// read reflects at least every write up to it. On a replica it may trail the durable LSN
/// (entries are acked once durable and applied off the ack path).
pub const APPLIED_LSN_HEADER: &str = "x-concord-applied-lsn";
/// Reply metadata of every read: the LSN durable in this process's WAL when the read ran.
pub const DURABLE_LSN_HEADER: &str = "x-concord-durable-lsn";

/// Who sent a request, from its bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// The shop's operator (the admin token).
    Admin,
    /// A signed-in customer.
    Customer(UserId),
}

/// The Shop service.
pub struct ShopService {
    shop: Shop,
    replicator: Arc<Replicator>,
    admin_token: String,
    sessions: Sessions,
}

impl ShopService {
    /// A service over `shop`, gated by `replicator`, with product mutations and order
    /// status changes requiring `admin_token` and customer calls a session of `sessions`.
    pub fn new(
        shop: Shop,
        replicator: Arc<Replicator>,
        admin_token: String,
        sessions: Sessions,
    ) -> Self {
        Self {
            shop,
            replicator,
            admin_token,
            sessions,
        }
    }

    /// Admin-only calls: the admin token passes; a valid customer session is known but not
    /// allowed (PERMISSION_DENIED); anything else is UNAUTHENTICATED.
    fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let refused = match concord::auth::require_token(request.metadata(), &self.admin_token) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let customer = concord::auth::bearer_token(request.metadata())
            .is_some_and(|token| self.sessions.verify(token).is_ok());
        if customer {
            return Err(ShopError::PermissionDenied(
                "this call needs the admin token; a customer session may not make it".into(),
            )
            .into());
        }
        Err(refused.into())
    }

    /// This process's applied and durable LSNs, read before a read runs.
    fn read_positions(&self) -> (u64, u64) {
        self.replicator.positions()
    }

    /// A read's reply, with the positions it reflects ([`APPLIED_LSN_HEADER`]).
    fn read_reply<T>(positions: (u64, u64), reply: T) -> Response<T> {
        let mut response = Response::new(reply);
        let metadata = response.metadata_mut();
        metadata.insert(APPLIED_LSN_HEADER, positions.0.into());
        metadata.insert(DURABLE_LSN_HEADER, positions.1.into());
        response
    }

    /// The admin or the customer whose valid session the request carries.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, ShopError> {
        let token = concord::auth::bearer_token(request.metadata()).ok_or_else(|| {
            ShopError::Unauthenticated(
                "sign in first: send metadata 'authorization: Bearer <session token>'".into(),
            )
        })?;
        if concord::auth::constant_time_eq(token.as_bytes(), self.admin_token.as_bytes()) {
            return Ok(Caller::Admin);
        }
        let session = self.sessions.verify(token)?;
        match self.shop.get_account(session.user).await {
            Ok(account) if account.session_generation == session.generation => {
                Ok(Caller::Customer(session.user))
            }
            Ok(_) => Err(ShopError::Unauthenticated(
                "this session was signed out; sign in again".into(),
            )),
            Err(ShopError::NotFound(_)) => Err(ShopError::Unauthenticated(
                "the session's account does not exist; sign up or sign in again".into(),
            )),
            Err(e) => Err(e),
        }
    }

    /// The signed-in customer a cart write or order placement acts for (the admin token
    /// changes no customer's cart).
    async fn customer<T>(&self, request: &Request<T>, named: &str) -> Result<String, ShopError> {
        match self.caller(request).await? {
            Caller::Customer(user) => acting_for(user, named),
            Caller::Admin => Err(ShopError::PermissionDenied(
                "the admin token places no orders and changes no cart; sign in as the customer"
                    .into(),
            )),
        }
    }

    /// Whose cart or orders a read shows: the session's own, or any user the admin names.
    async fn reader<T>(&self, request: &Request<T>, named: &str) -> Result<String, ShopError> {
        match self.caller(request).await? {
            Caller::Customer(user) => acting_for(user, named),
            Caller::Admin if named.is_empty() => Err(ShopError::invalid(
                "user_id must be set when reading with the admin token",
            )),
            Caller::Admin => Ok(named.to_string()),
        }
    }
}

/// `user`'s id when the request names nobody or `user` itself; PERMISSION_DENIED when it
/// names someone else.
fn acting_for(user: UserId, named: &str) -> Result<String, ShopError> {
    let own = user.to_string();
    if named.is_empty() || named == own {
        Ok(own)
    } else {
        Err(ShopError::PermissionDenied(format!(
            "this session is {own}'s; it may not act for user {}",
            quote(named)
        )))
    }
}

impl ShopService {
    /// Completes a durable local write: replication per mode, then the `WriteInfo`.
    async fn finish<T>(&self, written: &Written<T>) -> Result<pb::WriteInfo, Status> {
        Ok(self
            .replicator
            .finish_write(written.lsn, written.term)
            .await?)
    }
}

#[tonic::async_trait]
impl ShopApi for ShopService {
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        self.require_admin(&request)?;
        self.replicator.check_writable()?;
        let r = request.into_inner();
        let new = NewProduct {
            name: r.name,
            description: r.description,
            price_minor: r.price_minor,
            currency: r.currency,
            stock: r.stock,
        };
        let written = self.shop.create_product(new).await?;
        let write = self.finish(&written).await?;
        tracing::debug!(product = %written.value.id, lsn = ?written.lsn, "product created");
        Ok(Response::new(pb::CreateProductResponse {
            product: Some(written.value.into()),
            write: Some(write),
        }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let positions = self.read_positions();
        let id = convert::product_id(&request.get_ref().id)?;
        let product = self.shop.get_product(id).await?;
        Ok(Self::read_reply(
            positions,
            pb::GetProductResponse {
                product: Some(product.into()),
            },
        ))
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        self.require_admin(&request)?;
        self.replicator.check_writable()?;
        let r = request.into_inner();
        let id = convert::product_id(&r.id)?;
        let patch = ProductPatch {
            name: r.name,
            description: r.description,
            price_minor: r.price_minor,
            currency: r.currency,
            stock: r.stock,
        };
        let written = self.shop.update_product(id, patch).await?;
        let write = self.finish(&written).await?;
        tracing::debug!(product = %id, lsn = ?written.lsn, "product updated");
        Ok(Response::new(pb::UpdateProductResponse {
            product: Some(written.value.into()),
            write: Some(write),
        }))
    }

    async fn delete_product(
        &self,
        request: Request<pb::DeleteProductRequest>,
    ) -> Result<Response<pb::DeleteProductResponse>, Status> {
        self.require_admin(&request)?;
        self.replicator.check_writable()?;
        let id = convert::product_id(&request.get_ref().id)?;
        let written = self.shop.delete_product(id).await?;
        let write = self.finish(&written).await?;
        tracing::debug!(product = %id, lsn = ?written.lsn, "product deleted");
        Ok(Response::new(pb::DeleteProductResponse {
            write: Some(write),
        }))
    }

    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        let positions = self.read_positions();
        let r = request.into_inner();
        let page = self
            .shop
            .list_products(ProductQuery {
                page_size: r.page_size,
                page_token: r.page_token,
                name_contains: r.name_contains,
            })
            .await?;
        Ok(Self::read_reply(
            positions,
            pb::ListProductsResponse {
                products: page.products.into_iter().map(Into::into).collect(),
                next_page_token: page.next_page_token,
            },
        ))
    }

    async fn add_cart_item(
        &self,
        request: Request<pb::AddCartItemRequest>,
    ) -> Result<Response<pb::AddCartItemResponse>, Status> {
        self.replicator.check_writable()?;
        let user = self.customer(&request, &request.get_ref().user_id).await?;
        let r = request.into_inner();
        let product = convert::product_id(&r.product_id)?;
        let written = self.shop.add_cart_item(user, product, r.quantity).await?;
        let write = self.finish(&written).await?;
        Ok(Response::new(pb::AddCartItemResponse {
            cart: Some(written.value.into()),
            write: Some(write),
        }))
    }

    async fn set_cart_item_quantity(
        &self,
        request: Request<pb::SetCartItemQuantityRequest>,
    ) -> Result<Response<pb::SetCartItemQuantityResponse>, Status> {
        self.replicator.check_writable()?;
        let user = self.customer(&request, &request.get_ref().user_id).await?;
        let r = request.into_inner();
        let product = convert::product_id(&r.product_id)?;
        let written = self
            .shop
            .set_cart_item_quantity(user, product, r.quantity)
            .await?;
        let write = self.finish(&written).await?;
        Ok(Response::new(pb::SetCartItemQuantityResponse {
            cart: Some(written.value.into()),
            write: Some(write),
        }))
    }

    async fn remove_cart_item(
        &self,
        request: Request<pb::RemoveCartItemRequest>,
    ) -> Result<Response<pb::RemoveCartItemResponse>, Status> {
        self.replicator.check_writable()?;
        let user = self.customer(&request, &request.get_ref().user_id).await?;
        let r = request.into_inner();
        let product = convert::product_id(&r.product_id)?;
        let written = self.shop.remove_cart_item(user, product).await?;
        let write = self.finish(&written).await?;
        Ok(Response::new(pb::RemoveCartItemResponse {
            cart: Some(written.value.into()),
            write: Some(write),
        }))
    }

    async fn get_cart(
        &self,
        request: Request<pb::GetCartRequest>,
    ) -> Result<Response<pb::GetCartResponse>, Status> {
        let user = self.reader(&request, &request.get_ref().user_id).await?;
        let positions = self.read_positions();
        let cart = self.shop.get_cart(user).await?;
        Ok(Self::read_reply(
            positions,
            pb::GetCartResponse {
                cart: Some(cart.into()),
            },
        ))
    }

    async fn clear_cart(
        &self,
        request: Request<pb::ClearCartRequest>,
    ) -> Result<Response<pb::ClearCartResponse>, Status> {
        self.replicator.check_writable()?;
        let user = self.customer(&request, &request.get_ref().user_id).await?;
        let written = self.shop.clear_cart(user).await?;
        let write = self.finish(&written).await?;
        Ok(Response::new(pb::ClearCartResponse {
            cart: Some(written.value.into()),
            write: Some(write),
        }))
    }

    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        self.replicator.check_writable()?;
        let user = self.customer(&request, &request.get_ref().user_id).await?;
        let r = request.into_inner();
        let written = self.shop.place_order(user, r.idempotency_key).await?;
        // A replay reports the LSN and term the order was first placed in, and is not
        // acknowledged before the original is (replicated): finish it at that LSN.
        let write = if written.value.replayed {
            let order = &written.value.order;
            let term = if order.placed_term == 0 {
                written.term
            } else {
                order.placed_term
            };
            self.replicator
                .finish_write(Some(order.placed_lsn), term)
                .await?
        } else {
            self.finish(&written).await?
        };
        tracing::debug!(order = %written.value.order.id, replayed = written.value.replayed, lsn = ?written.lsn, "order placed");
        Ok(Response::new(pb::PlaceOrderResponse {
            order: Some(written.value.order.into()),
            write: Some(write),
            replayed: written.value.replayed,
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let caller = self.caller(&request).await?;
        let positions = self.read_positions();
        let id = convert::order_id(&request.get_ref().order_id)?;
        let order = self.shop.get_order(id).await?;
        if let Caller::Customer(user) = caller {
            if order.user_id != user.to_string() {
                return Err(crate::order::not_found(id).into());
            }
        }
        Ok(Self::read_reply(
            positions,
            pb::GetOrderResponse {
                order: Some(order.into()),
            },
        ))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let user = self.reader(&request, &request.get_ref().user_id).await?;
        let positions = self.read_positions();
        let r = request.into_inner();
        let page = self
            .shop
            .list_orders(user, r.page_size, r.page_token)
            .await?;
        Ok(Self::read_reply(
            positions,
            pb::ListOrdersResponse {
                orders: page.orders.into_iter().map(Into::into).collect(),
                next_page_token: page.next_page_token,
            },
        ))
    }

    async fn update_order_status(
        &self,
        request: Request<pb::UpdateOrderStatusRequest>,
    ) -> Result<Response<pb::UpdateOrderStatusResponse>, Status> {
        self.require_admin(&request)?;
        self.replicator.check_writable()?;
        let r = request.into_inner();
        let id = convert::order_id(&r.order_id)?;
        let to = convert::order_status_from_pb(r.status)?;
        let written = self.shop.update_order_status(id, to).await?;
        let write = self.finish(&written).await?;
        tracing::debug!(order = %id, status = %to, lsn = ?written.lsn, "order status changed");
        Ok(Response::new(pb::UpdateOrderStatusResponse {
            order: Some(written.value.into()),
            write: Some(write),
        }))
    }

    async fn sign_up(
        &self,
        request: Request<pb::SignUpRequest>,
    ) -> Result<Response<pb::SignUpResponse>, Status> {
        self.replicator.check_writable()?;
        let r = request.into_inner();
        let written = self
            .shop
            .sign_up(r.username, Password::new(r.password))
            .await?;
        let write = self.finish(&written).await?;
        let session = self
            .sessions
            .issue(written.value.id, written.value.session_generation)?;
        tracing::info!(user = %written.value.id, lsn = ?written.lsn, "account created");
        Ok(Response::new(pb::SignUpResponse {
            account: Some(written.value.into()),
            session: Some(session.into()),
            write: Some(write),
        }))
    }

    async fn sign_in(
        &self,
        request: Request<pb::SignInRequest>,
    ) -> Result<Response<pb::SignInResponse>, Status> {
        let r = request.into_inner();
        let account = self
            .shop
            .sign_in(r.username, Password::new(r.password))
            .await?;
        let session = self
            .sessions
            .issue(account.id, account.session_generation)?;
        tracing::debug!(user = %account.id, "signed in");
        Ok(Response::new(pb::SignInResponse {
            account: Some(account.into()),
            session: Some(session.into()),
        }))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let Caller::Customer(user) = self.caller(&request).await? else {
            return Err(ShopError::invalid("the admin token has no account; sign in").into());
        };
        let account = self.shop.get_account(user).await?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(account.into()),
        }))
    }

    async fn sign_out(
        &self,
        request: Request<pb::SignOutRequest>,
    ) -> Result<Response<pb::SignOutResponse>, Status> {
        self.replicator.check_writable()?;
        let Caller::Customer(user) = self.caller(&request).await? else {
            return Err(ShopError::invalid("the admin token has no session to sign out").into());
        };
        let written = self.shop.sign_out(user).await?;
        let write = self.finish(&written).await?;
        tracing::info!(%user, lsn = ?written.lsn, "signed out");
        Ok(Response::new(pb::SignOutResponse { write: Some(write) }))
    }

    async fn list_all_orders(
        &self,
        request: Request<pb::ListAllOrdersRequest>,
    ) -> Result<Response<pb::ListAllOrdersResponse>, Status> {
        self.require_admin(&request)?;
        let r = request.into_inner();
        let status = convert::status_filter_from_pb(r.status)?;
        let page = self
            .shop
            .list_all_orders(status, r.page_size, r.page_token)
            .await?;
        Ok(Response::new(pb::ListAllOrdersResponse {
            orders: page.orders.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session acts for its own user (named or not), never for anyone else.
    #[test]
    fn acting_for_table() {
        let me = UserId(7);
        let cases = [
            ("", Some("u-000000000007")),
            ("u-000000000007", Some("u-000000000007")),
            ("u-7", None), // the same number spelled differently is another key: refused
            ("u-000000000008", None),
            ("alice", None),
        ];
        for (named, want) in cases {
            match (acting_for(me, named), want) {
                (Ok(got), Some(want)) => assert_eq!(got, want, "{named:?}"),
                (Err(ShopError::PermissionDenied(_)), None) => {}
                (got, want) => panic!("{named:?}: {got:?}, want {want:?}"),
            }
        }
    }
}
