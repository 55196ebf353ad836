# One multi-stage build for every billpay binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p billing-svc -p payment-svc -p billpay

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 billpay
COPY --from=build /src/target/release/billing-svc /src/target/release/payment-svc /src/target/release/provider-sim /src/target/release/billpay /usr/local/bin/
USER billpay
WORKDIR /home/billpay
EXPOSE 50051 50052 50053 50060
CMD ["billpay", "--help"]
