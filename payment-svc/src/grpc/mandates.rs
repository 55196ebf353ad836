//! CreateMandate, RevokeMandate, GetMandate and ListMandates (SPEC §11).

use billpay_contracts::payment::v1 as wire;
use service_kit::{
    audit::admit_account,
    auth::Caller,
    clock::{now_micros, timestamp_from_micros},
    errors::{AllChecked as _, Checked, FieldViolations, invalid_field, refusal},
    wire::{money_field, money_to_wire},
};
use tonic::{Code, Request, Status};

use super::{
    PaymentApi,
    convert::{checked_method, method_to_wire},
};
use crate::{
    domain::{
        mandate::{
            MandateStatus, MandateTerms, mandate_fingerprint, parse_consent_version,
            parse_revoke_reason,
        },
        payment::{Instrument, parse_idempotency_key},
    },
    storage::{Mandate, MandateInsert, NewMandate},
};

/// The longest account or mandate id accepted.
const ID_BYTES_MAX: usize = 64;
/// How far ahead of our clock a consent's time may be (the customer's device clock).
const CONSENT_CLOCK_SKEW_MICROS: i64 = 5 * 60 * 1_000_000;

fn check_id(violations: &mut FieldViolations, field: &str, id: &str) {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        violations.add(field, format!("must be 1 to {ID_BYTES_MAX} characters"));
    }
}

fn status_to_wire(status: MandateStatus) -> wire::MandateStatus {
    match status {
        MandateStatus::Active => wire::MandateStatus::Active,
        MandateStatus::Revoked => wire::MandateStatus::Revoked,
        MandateStatus::Replaced => wire::MandateStatus::Replaced,
        MandateStatus::Suspended => wire::MandateStatus::Suspended,
    }
}

pub fn mandate_to_wire(mandate: &Mandate) -> wire::Mandate {
    wire::Mandate {
        mandate_id: mandate.mandate_id.clone(),
        account_id: mandate.account_id.clone(),
        status: status_to_wire(mandate.status).into(),
        method: method_to_wire(mandate.method).into(),
        instrument_last4: mandate.instrument_last4.clone(),
        max_amount_per_debit: Some(money_to_wire(mandate.max_amount_per_debit)),
        consent: Some(wire::Consent {
            text_version: mandate.consent_text_version.clone(),
            accepted_at: Some(timestamp_from_micros(mandate.consent_accepted_at_micros)),
        }),
        status_reason: mandate.status_reason.clone(),
        created_at: Some(timestamp_from_micros(mandate.created_at_micros)),
        updated_at: Some(timestamp_from_micros(mandate.updated_at_micros)),
    }
}

/// The consent's acceptance time in microseconds: required, not in the future.
fn accepted_at_micros(
    violations: &mut FieldViolations,
    consent: Option<&wire::Consent>,
) -> Checked<i64> {
    let Some(accepted_at) = consent.and_then(|consent| consent.accepted_at.as_ref()) else {
        return Err(violations.add("consent.accepted_at", "is required"));
    };
    let micros = accepted_at
        .seconds
        .checked_mul(1_000_000)
        .and_then(|micros| micros.checked_add(i64::from(accepted_at.nanos / 1_000)))
        .filter(|micros| *micros > 0 && (0..1_000_000_000).contains(&accepted_at.nanos));
    match micros {
        None => Err(violations.add("consent.accepted_at", "is not a valid time")),
        Some(micros) if micros > now_micros() + CONSENT_CLOCK_SKEW_MICROS => {
            Err(violations.add("consent.accepted_at", "must not be in the future"))
        }
        Some(micros) => Ok(micros),
    }
}

impl PaymentApi {
    pub(super) async fn handle_create_mandate(
        &self,
        request: Request<wire::CreateMandateRequest>,
    ) -> Result<wire::CreateMandateResponse, Status> {
        let caller = Caller::of(&request)?.clone();
        let message = request.into_inner();
        let mut violations = FieldViolations::new();
        check_id(&mut violations, "account_id", &message.account_id);
        let key = violations.check(
            "idempotency_key",
            parse_idempotency_key(&message.idempotency_key),
        );
        let method = checked_method(&mut violations, message.method);
        let instrument = violations.check("instrument", Instrument::parse(&message.instrument));
        let cap = money_field(
            &mut violations,
            "max_amount_per_debit",
            message.max_amount_per_debit.as_ref(),
        );
        if cap.is_ok_and(|cap| cap.is_zero()) {
            violations.add("max_amount_per_debit", "must be greater than zero");
        }
        let consent = message.consent.as_ref();
        let version = violations.check(
            "consent.text_version",
            parse_consent_version(consent.map_or("", |consent| consent.text_version.as_str())),
        );
        let accepted_at = accepted_at_micros(&mut violations, consent);
        let (key, method, instrument, cap, version, accepted_at) =
            violations.finish((key, method, instrument, cap, version, accepted_at).all())?;
        caller.check_account(&message.account_id)?;
        tracing::Span::current().record("account_id", message.account_id.as_str());

        let terms = MandateTerms {
            account_id: &message.account_id,
            method,
            instrument: &instrument,
            max_amount_per_debit: cap,
            consent_text_version: version,
            consent_accepted_at_micros: accepted_at,
        };
        let fingerprint = mandate_fingerprint(self.autopay.fingerprint_key(), &terms);
        let sealed = self
            .autopay
            .seal()
            .seal(&instrument, &message.account_id)
            .map_err(service_kit::errors::internal)?;
        let new = NewMandate {
            account_id: &message.account_id,
            idempotency_key: key,
            request_fingerprint: &fingerprint,
            method,
            instrument_last4: &instrument.last4(),
            instrument_sealed: &sealed,
            max_amount_per_debit: cap,
            consent_text_version: version,
            consent_accepted_at_micros: accepted_at,
        };
        let mandate = match self.flow.store().insert_mandate(&new).await? {
            MandateInsert::Inserted(mandate) => mandate,
            MandateInsert::Existing(existing) if existing.request_fingerprint == fingerprint => {
                existing
            }
            MandateInsert::Existing(_) => {
                return Err(refusal(
                    Code::AlreadyExists,
                    "IDEMPOTENCY_KEY_REUSED",
                    "this idempotency_key was used for a different mandate",
                ));
            }
            MandateInsert::Contended => {
                return Err(Status::aborted(
                    "another mandate of this account was recorded at the same moment; retry",
                ));
            }
        };
        Ok(wire::CreateMandateResponse {
            mandate: Some(mandate_to_wire(&mandate)),
        })
    }

    /// A mandate the caller may see or act on (customers their own; operators
    /// audited with its account).
    async fn visible_mandate<T>(
        &self,
        request: &Request<T>,
        mandate_id: &str,
        rpc: &str,
    ) -> Result<Mandate, Status> {
        let caller = Caller::of(request)?;
        if mandate_id.is_empty() || mandate_id.len() > ID_BYTES_MAX {
            return Err(invalid_field(
                "mandate_id",
                format!("must be 1 to {ID_BYTES_MAX} characters"),
            ));
        }
        let mandate = self
            .flow
            .store()
            .mandate(mandate_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no mandate {mandate_id}")))?;
        admit_account(self.flow.store().db(), caller, rpc, &mandate.account_id).await?;
        Ok(mandate)
    }

    pub(super) async fn handle_revoke_mandate(
        &self,
        request: Request<wire::RevokeMandateRequest>,
    ) -> Result<wire::RevokeMandateResponse, Status> {
        let message = request.get_ref();
        let reason = parse_revoke_reason(&message.reason)
            .map_err(|error| invalid_field("reason", error.to_string()))?;
        let mandate = self
            .visible_mandate(&request, &message.mandate_id, "RevokeMandate")
            .await?;
        let caller = Caller::of(&request)?;
        let reason = if reason.is_empty() {
            format!("revoked by {:?}", caller.role).to_lowercase()
        } else {
            reason.to_owned()
        };
        let store = self.flow.store();
        if store.revoke_mandate(&mandate, &reason).await? {
            tracing::info!(mandate_id = %mandate.mandate_id, subject = %caller.subject, "mandate revoked");
        }
        let mandate = store
            .mandate(&mandate.mandate_id)
            .await?
            .ok_or_else(|| Status::internal("a mandate vanished"))?;
        Ok(wire::RevokeMandateResponse {
            mandate: Some(mandate_to_wire(&mandate)),
        })
    }

    pub(super) async fn handle_get_mandate(
        &self,
        request: Request<wire::GetMandateRequest>,
    ) -> Result<wire::GetMandateResponse, Status> {
        let mandate = self
            .visible_mandate(&request, &request.get_ref().mandate_id, "GetMandate")
            .await?;
        Ok(wire::GetMandateResponse {
            mandate: Some(mandate_to_wire(&mandate)),
        })
    }

    pub(super) async fn handle_list_mandates(
        &self,
        request: Request<wire::ListMandatesRequest>,
    ) -> Result<wire::ListMandatesResponse, Status> {
        let caller = Caller::of(&request)?;
        let account_id = &request.get_ref().account_id;
        let mut violations = FieldViolations::new();
        check_id(&mut violations, "account_id", account_id);
        violations.into_result()?;
        let store = self.flow.store();
        admit_account(store.db(), caller, "ListMandates", account_id).await?;
        let mandates = store.mandates_of(account_id).await?;
        Ok(wire::ListMandatesResponse {
            mandates: mandates.iter().map(mandate_to_wire).collect(),
        })
    }
}
