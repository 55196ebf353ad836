//! What gRPC reflection serves: the contract of the services this server runs (their
//! files and what those import, nothing of the other service), the health contract, and
//! the `google.rpc` error detail types, so a client such as grpcurl can decode an
//! error's ErrorInfo and BadRequest into JSON.

use std::collections::{BTreeSet, HashMap};

use prost::Message as _;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

/// The files of billpay's contracts that define `service_names` (full names such as
/// `billing.v1.BillingService`), with everything they import.
pub fn contract_files(service_names: &[&str]) -> Result<FileDescriptorSet, prost::DecodeError> {
    let all = FileDescriptorSet::decode(billpay_contracts::FILE_DESCRIPTOR_SET)?;
    let by_name: HashMap<&str, &FileDescriptorProto> =
        all.file.iter().map(|file| (file.name(), file)).collect();
    let mut wanted: Vec<&str> = all
        .file
        .iter()
        .filter(|file| {
            file.service.iter().any(|service| {
                let full = format!("{}.{}", file.package(), service.name());
                service_names.contains(&full.as_str())
            })
        })
        .map(|file| file.name())
        .collect();
    let mut kept = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if kept.insert(name)
            && let Some(file) = by_name.get(name)
        {
            wanted.extend(file.dependency.iter().map(String::as_str));
        }
    }
    Ok(FileDescriptorSet {
        // The set's order (dependencies first) is kept.
        file: all
            .file
            .iter()
            .filter(|file| kept.contains(file.name()))
            .cloned()
            .collect(),
    })
}

/// The v1 and v1alpha reflection builders' common configuration.
pub fn builder(
    service_names: &[&str],
) -> Result<tonic_reflection::server::Builder<'static>, prost::DecodeError> {
    Ok(service_names.iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_file_descriptor_set(contract_files(service_names)?)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(tonic_health::pb::health_server::SERVICE_NAME),
        |builder, name| builder.with_service_name(*name),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: &FileDescriptorSet) -> Vec<&str> {
        set.file.iter().map(|file| file.name()).collect()
    }

    fn defines_service(set: &FileDescriptorSet, package: &str) -> bool {
        set.file
            .iter()
            .any(|file| file.package() == package && !file.service.is_empty())
    }

    #[test]
    fn billing_reflects_its_own_contract_and_not_payments() {
        let set = contract_files(&["billing.v1.BillingService"]).unwrap();
        assert!(defines_service(&set, "billing.v1"), "{:?}", names(&set));
        assert!(!defines_service(&set, "payment.v1"), "{:?}", names(&set));
        // What billing's messages import comes along.
        assert!(names(&set).contains(&"common/v1/money.proto"));
    }

    #[test]
    fn payment_reflects_its_own_contract_and_not_billings() {
        let set = contract_files(&["payment.v1.PaymentService"]).unwrap();
        assert!(defines_service(&set, "payment.v1"), "{:?}", names(&set));
        assert!(!defines_service(&set, "billing.v1"), "{:?}", names(&set));
        assert!(!names(&set).iter().any(|name| name.starts_with("billing/")));
    }

    #[test]
    fn every_kept_file_has_its_imports() {
        let set = contract_files(&["billing.v1.BillingService"]).unwrap();
        let kept = names(&set);
        for file in &set.file {
            for dependency in &file.dependency {
                assert!(
                    kept.contains(&dependency.as_str()),
                    "{} imports {dependency}",
                    file.name()
                );
            }
        }
    }
}
