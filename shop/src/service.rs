//! The `concord.shop.v1.Shop` gRPC service: convert the request, call the domain, convert
//! the reply. Nothing else lives here.
//!
//! Every write first asks the [`Replicator`] whether this process may accept writes (a
//! replica answers FAILED_PRECONDITION naming the primary), then runs on the domain, then
//! lets the replicator finish it (sync mode waits for the replica's ack) and reports the
//! outcome in `WriteInfo`. Product mutations and order status changes also need the admin
//! bearer token, checked before anything else: a customer may place and read orders, but
//! only the shop's operator may mark one paid, shipped or cancelled (restocking).

use std::sync::Arc;

use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::shop_server::Shop as ShopApi;
use tonic::{Request, Response, Status};

use crate::catalog::{NewProduct, ProductPatch, ProductQuery};
use crate::convert;
use crate::replication::Replicator;
use crate::shop::Shop;
use crate::store::Written;

/// Reply metadata of every read: the LSN applied to the data before the read ran, so the
/// read reflects at least every write up to it. On a replica it may trail the durable LSN
/// (entries are acked once durable and applied off the ack path).
pub const APPLIED_LSN_HEADER: &str = "x-concord-applied-lsn";
/// Reply metadata of every read: the LSN durable in this process's WAL when the read ran.
pub const DURABLE_LSN_HEADER: &str = "x-concord-durable-lsn";

/// The Shop service.
pub struct ShopService {
    shop: Shop,
    replicator: Arc<Replicator>,
    admin_token: String,
}

impl ShopService {
    /// A service over `shop`, gated by `replicator`, with product mutations and order
    /// status changes requiring `admin_token`.
    pub fn new(shop: Shop, replicator: Arc<Replicator>, admin_token: String) -> Self {
        Self {
            shop,
            replicator,
            admin_token,
        }
    }

    fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        concord::auth::require_token(request.metadata(), &self.admin_token).map_err(Status::from)
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
        let r = request.into_inner();
        let product = convert::product_id(&r.product_id)?;
        let written = self
            .shop
            .add_cart_item(r.user_id, product, r.quantity)
            .await?;
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
        let r = request.into_inner();
        let product = convert::product_id(&r.product_id)?;
        let written = self
            .shop
            .set_cart_item_quantity(r.user_id, product, r.quantity)
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
        let r = request.into_inner();
        let product = convert::product_id(&r.product_id)?;
        let written = self.shop.remove_cart_item(r.user_id, product).await?;
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
        let positions = self.read_positions();
        let cart = self.shop.get_cart(request.into_inner().user_id).await?;
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
        let written = self.shop.clear_cart(request.into_inner().user_id).await?;
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
        let r = request.into_inner();
        let written = self.shop.place_order(r.user_id, r.idempotency_key).await?;
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
        let positions = self.read_positions();
        let id = convert::order_id(&request.get_ref().order_id)?;
        let order = self.shop.get_order(id).await?;
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
        let positions = self.read_positions();
        let r = request.into_inner();
        let page = self
            .shop
            .list_orders(r.user_id, r.page_size, r.page_token)
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
}
