#!/usr/bin/env python3
"""A Concord client in Python, from stubs generated out of proto/ (see generate.sh).

Given only the registry's address it:
  1. resolves the shop primary (service "shop", metadata role=primary) and the aggregator
     through the Registry service, waiting (bounded) for them to register;
  2. creates a product (admin token from $CONCORD_ADMIN_TOKEN), signs a new customer up,
     signs in again (the session token goes in `authorization: Bearer` metadata), adds
     the product to the customer's cart and places the order with an idempotency key;
  3. places it again with the same key and checks the shop replays the same order, and
     checks that a call without the session is refused (UNAUTHENTICATED);
  4. asks the aggregator for the consensus prediction of one flower and prints each node's
     vote.

Every call has a deadline. Any failure prints `python-client: FAILED: ...` on stderr and
exits with status 1.
"""

import argparse
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gen"))

try:
    import grpc
    from concord.predict.v1 import predict_pb2, predict_pb2_grpc
    from concord.registry.v1 import registry_pb2, registry_pb2_grpc
    from concord.shop.v1 import shop_pb2, shop_pb2_grpc
except ImportError as err:
    sys.exit(
        f"python-client: FAILED: cannot import the gRPC stubs ({err}); "
        "install requirements.txt and run generate.sh first"
    )

# Class names by label, as documented on PredictResponse.label.
CLASS_NAMES = ["setosa", "versicolor", "virginica"]
# A virginica from the Iris data set (sepal length, sepal width, petal length, petal width).
FLOWER = [6.3, 3.3, 6.0, 2.5]
# Status codes worth retrying while the cluster is still coming up.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Failure(Exception):
    """A step went wrong; the message says which and why."""


def call(step, rpc, request, timeout, metadata=None):
    """Calls `rpc` with a deadline; turns a gRPC error into a Failure naming the step."""
    try:
        return rpc(request, timeout=timeout, metadata=metadata)
    except grpc.RpcError as err:
        raise Failure(f"{step}: {err.code().name}: {err.details()}") from err


def retry_until(deadline, step, attempt):
    """Runs `attempt()` until it returns something other than None, retrying on
    UNAVAILABLE/DEADLINE_EXCEEDED, until `deadline` (time.monotonic())."""
    last = "no answer yet"
    while True:
        try:
            result = attempt()
            if result is not None:
                return result
        except grpc.RpcError as err:
            if err.code() not in RETRYABLE:
                raise Failure(f"{step}: {err.code().name}: {err.details()}") from err
            last = f"{err.code().name}: {err.details()}"
        if time.monotonic() >= deadline:
            raise Failure(f"{step}: gave up waiting ({last})")
        time.sleep(0.2)


def resolve(registry, service, timeout, deadline, role=None):
    """Address of the first live instance of `service` (with metadata role=`role`, if set)."""
    wanted = f"{service} (role={role})" if role else service

    def attempt():
        reply = registry.Resolve(
            registry_pb2.ResolveRequest(service=service), timeout=timeout
        )
        for instance in reply.instances:
            if role is None or instance.metadata.get("role") == role:
                return instance.address
        return None

    address = retry_until(deadline, f"resolve {wanted}", attempt)
    print(f"resolved {wanted} -> {address}")
    return address


def shop_flow(shop, timeout, admin_token):
    """Creates a product, orders it, replays the order; returns the order id."""
    run_id = uuid.uuid4().hex[:12]
    admin = [("authorization", f"Bearer {admin_token}")]

    created = call(
        "CreateProduct",
        shop.CreateProduct,
        shop_pb2.CreateProductRequest(
            name=f"python-client mug {run_id}",
            description="Created by examples/python-client/client.py",
            price_minor=1299,
            currency="EUR",
            stock=10,
        ),
        timeout,
        metadata=admin,
    )
    product = created.product
    print(f"created product {product.id} ({product.name}, stock {product.stock})")

    # A customer account: sign up, then sign in as a returning customer would. The
    # password is random per run and never printed.
    username = f"py-{run_id}"
    password = uuid.uuid4().hex
    credentials = shop_pb2.SignUpRequest(username=username, password=password)
    signed_up = call("SignUp", shop.SignUp, credentials, timeout)
    signed_in = call(
        "SignIn",
        shop.SignIn,
        shop_pb2.SignInRequest(username=username, password=password),
        timeout,
    )
    user_id = signed_in.account.user_id
    if user_id != signed_up.account.user_id:
        raise Failure(f"SignIn: account {user_id!r} is not the one signed up")
    session = [("authorization", f"Bearer {signed_in.session.token}")]
    print(f"signed in as {username} (user {user_id})")

    added = call(
        "AddCartItem",
        shop.AddCartItem,
        shop_pb2.AddCartItemRequest(user_id=user_id, product_id=product.id, quantity=2),
        timeout,
        metadata=session,
    )
    print(
        f"cart of {user_id}: {len(added.cart.lines)} line(s), "
        f"total {added.cart.total_minor} {added.cart.currency}"
    )

    key = f"py-order-{run_id}"
    request = shop_pb2.PlaceOrderRequest(user_id=user_id, idempotency_key=key)
    first = call("PlaceOrder", shop.PlaceOrder, request, timeout, metadata=session)
    if not first.order.id:
        raise Failure("PlaceOrder: the reply has no order id")
    if first.replayed:
        raise Failure(f"PlaceOrder: a new key {key!r} was reported as a replay")
    print(
        f"placed order {first.order.id}: total {first.order.total_minor} "
        f"{first.order.currency}, lsn {first.write.lsn}"
    )

    again = call("PlaceOrder (replay)", shop.PlaceOrder, request, timeout, metadata=session)
    if again.order.id != first.order.id:
        raise Failure(
            f"PlaceOrder replay with key {key!r} returned order {again.order.id!r}, "
            f"expected {first.order.id!r}"
        )
    if not again.replayed:
        raise Failure("PlaceOrder replay: replayed flag not set")
    print(f"replayed order id matches: {again.order.id} (replayed, lsn {again.write.lsn})")

    try:
        shop.GetOrder(shop_pb2.GetOrderRequest(order_id=first.order.id), timeout=timeout)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise Failure(f"GetOrder without a session: {err.code().name}") from err
        print("without a session the order is refused: UNAUTHENTICATED")
    else:
        raise Failure("GetOrder without a session returned someone's order")
    return first.order.id


def predict_flow(predictor, timeout, deadline, policy):
    """Asks the aggregator for a consensus and prints it with every node's vote."""
    request = predict_pb2.PredictRequest(
        features=FLOWER, policy=predict_pb2.Policy.Value(policy)
    )
    # The aggregator answers UNAVAILABLE until enough nodes have registered: retry, bounded.
    reply = retry_until(
        deadline,
        "Predict",
        lambda: predictor.Predict(request, timeout=timeout),
    )
    print(
        f"consensus: {reply.class_name} (label {reply.label}) for {list(FLOWER)} "
        f"policy {predict_pb2.Policy.Name(reply.policy)}, "
        f"{reply.answered}/{reply.asked} nodes answered, request_id {reply.request_id}"
    )
    probabilities = ", ".join(
        f"{name} {p:.3f}" for name, p in zip(CLASS_NAMES, reply.probabilities)
    )
    print(f"  probabilities: {probabilities}")
    for vote in reply.votes:
        status = predict_pb2.VoteStatus.Name(vote.status).removeprefix("VOTE_STATUS_")
        if vote.status == predict_pb2.VOTE_STATUS_ANSWERED:
            name = CLASS_NAMES[vote.label] if vote.label < len(CLASS_NAMES) else "?"
            detail = (
                f"{name} (label {vote.label}) weight {vote.weight:.3f} "
                f"trust {vote.trust:.2f} stake {vote.stake} {vote.latency_ms:.1f} ms"
            )
        else:
            detail = vote.error or "-"
        print(f"  vote {vote.node_id} at {vote.address}: {status} {detail}")
    if not reply.votes:
        raise Failure("Predict: the consensus reply lists no votes")
    return reply


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", required=True, help="registry address, host:port")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="deadline of each call, in seconds"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="how long to wait for services to register and nodes to answer, in seconds",
    )
    parser.add_argument(
        "--policy",
        default="POLICY_STAKE",
        choices=["POLICY_MEAN", "POLICY_TRUST", "POLICY_STAKE"],
        help="consensus policy",
    )
    args = parser.parse_args()
    admin_token = os.environ.get("CONCORD_ADMIN_TOKEN", "")
    if not admin_token:
        sys.exit(
            "python-client: FAILED: setup: CONCORD_ADMIN_TOKEN is not set; "
            "run: export CONCORD_ADMIN_TOKEN=$(concord token admin)"
        )
    deadline = time.monotonic() + args.wait

    with grpc.insecure_channel(args.registry) as registry_channel:
        registry = registry_pb2_grpc.RegistryStub(registry_channel)
        shop_addr = resolve(registry, "shop", args.timeout, deadline, role="primary")
        aggregator_addr = resolve(registry, "aggregator", args.timeout, deadline)

    with grpc.insecure_channel(shop_addr) as shop_channel:
        shop_flow(shop_pb2_grpc.ShopStub(shop_channel), args.timeout, admin_token)

    with grpc.insecure_channel(aggregator_addr) as aggregator_channel:
        predictor = predict_pb2_grpc.PredictorStub(aggregator_channel)
        predict_flow(predictor, args.timeout, deadline, args.policy)

    print("python-client: OK")


if __name__ == "__main__":
    try:
        main()
    except Failure as failure:
        print(f"python-client: FAILED: {failure}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
