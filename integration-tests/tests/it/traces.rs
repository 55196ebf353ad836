//! Traces (issue 11): a repayment's W3C trace context crosses payment-svc, the
//! provider and billing-svc; its trace id is in each one's log lines and in the spans
//! each exports over OTLP, received here by a collector of our own.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use billpay_contracts::{
    billing::v1::CreatePlanRequest, payment::v1::PaymentMethod,
    payment::v1::payment_service_client::PaymentServiceClient,
};
use integration_tests::{Backend, StackOptions, TestApp, authorized, connect};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::support::{bills_target, new_plan, open_account, poll_until, repayment};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
}

/// An OTLP/gRPC trace collector that keeps what it is sent.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(
                    |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(name) => Some(name.clone()),
                        _ => None,
                    },
                )
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span
                            .trace_id
                            .iter()
                            .map(|byte| format!("{byte:02x}"))
                            .collect(),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_collector() -> (SocketAddr, Collector) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, collector)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repayments_trace_id_is_in_every_services_logs_and_spans() {
    let (collector_addr, collector) = start_collector().await;
    let options = StackOptions {
        processes: true,
        otlp_collector: Some(collector_addr),
        ..StackOptions::default()
    };
    let test = "traces::a_repayments_trace_id_is_in_every_services_logs_and_spans";
    let app = TestApp::spawn_with(Backend::Sqlite, test, options)
        .await
        .unwrap();
    let account_id = open_account(&app, "traced-customer", "10000.00").await;
    let plan = app
        .billing()
        .await
        .create_plan(authorized(
            CreatePlanRequest {
                ..new_plan(&account_id, "traced-order", "mall-free", 3, "300.00")
            },
            &app.service_token(&["billing:write"]),
        ))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    let bill_id = plan.bills[0].bill_id.clone();

    // The caller's trace: its id must come through every hop.
    let trace_id = uuid::Uuid::now_v7().simple().to_string();
    let mut request = authorized(
        repayment(
            "traced-key-1",
            &account_id,
            bills_target(&[&bill_id]),
            "100.00",
            PaymentMethod::BankCard,
            "tok_4242",
        ),
        &app.payment_token(),
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let payment = PaymentServiceClient::new(connect(app.payment_addr).await)
        .create_repayment(request)
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert!(payment.applied, "{payment:?}");

    // Spans are exported in batches (every few seconds): poll for all three services.
    let services = ["payment-svc", "billing-svc", "provider-sim"];
    poll_until(
        "each service exported a span of the repayment's trace",
        || {
            let spans = collector.spans.lock().unwrap().clone();
            let trace_id = trace_id.clone();
            async move {
                services.iter().all(|service| {
                    spans
                        .iter()
                        .any(|span| span.service == *service && span.trace_id == trace_id)
                })
            }
        },
    )
    .await;
    let spans = collector.spans.lock().unwrap().clone();
    let names = |service: &str| -> Vec<String> {
        spans
            .iter()
            .filter(|span| span.service == service && span.trace_id == trace_id)
            .map(|span| span.name.clone())
            .collect()
    };
    eprintln!(
        "trace {trace_id}: payment-svc {:?}, provider-sim {:?}, billing-svc {:?}",
        names("payment-svc"),
        names("provider-sim"),
        names("billing-svc")
    );
    assert!(names("payment-svc").contains(&"rpc".to_owned()));
    assert!(names("billing-svc").contains(&"rpc".to_owned()));
    assert!(names("provider-sim").contains(&"provider_request".to_owned()));

    // And in each one's log lines.
    for service in ["payment", "billing", "sim"] {
        let logs = app.child_logs(service);
        let traced: Vec<&String> = logs
            .iter()
            .filter(|line| line.contains(&trace_id))
            .collect();
        assert!(
            !traced.is_empty(),
            "{service} logged a line with trace id {trace_id}; it logged:\n{}",
            logs.join("\n")
        );
        eprintln!("{service}: {}", traced[0]);
    }
    app.stop().await;
}
