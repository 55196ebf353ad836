//! ListDeadLetters and RetryDeadLetter: the outbox rows billing-svc refused for good
//! or that ran out of attempts, for operators to see and admins to send again.

use billpay_contracts::payment::v1 as wire;
use service_kit::{
    audit,
    auth::{Caller, Role},
    clock::timestamp_from_micros,
    errors::invalid_field,
    wire::{decode_page_token, encode_page_token, page_size},
};
use tonic::{Request, Status};

use super::PaymentApi;
use crate::storage::{DeadLetter, OutboxKind};

const TOKEN_KIND: &str = "dead-letters";

fn kind_to_wire(kind: OutboxKind) -> wire::OutboxKind {
    match kind {
        OutboxKind::Apply => wire::OutboxKind::Apply,
        OutboxKind::Reverse => wire::OutboxKind::Reverse,
    }
}

fn dead_letter_to_wire(letter: &DeadLetter) -> wire::DeadLetter {
    wire::DeadLetter {
        payment_id: letter.payment_id.clone(),
        account_id: letter.account_id.clone(),
        kind: kind_to_wire(letter.kind) as i32,
        attempts: letter.attempts,
        last_error: letter.last_error.clone().unwrap_or_default(),
        dead_at: Some(timestamp_from_micros(letter.dead_at_micros)),
    }
}

impl PaymentApi {
    pub(super) async fn handle_list_dead_letters(
        &self,
        request: Request<wire::ListDeadLettersRequest>,
    ) -> Result<wire::ListDeadLettersResponse, Status> {
        let caller = Caller::of(&request)?;
        if caller.role == Role::Customer {
            return Err(Status::permission_denied(
                "dead letters are for operators and services",
            ));
        }
        let message = request.get_ref();
        let limit = page_size(message.page_size)?;
        let after = decode_page_token(TOKEN_KIND, &message.page_token)?;
        let after = match after.as_deref().map(|token| token.split_once('|')) {
            None => None,
            Some(Some((payment_id, kind))) => Some((
                payment_id.to_owned(),
                OutboxKind::parse(kind)
                    .ok_or_else(|| invalid_field("page_token", "is not one this RPC gave"))?,
            )),
            Some(None) => return Err(invalid_field("page_token", "is not one this RPC gave")),
        };
        if caller.is_operator() {
            audit::record(
                self.flow.store().db(),
                &caller.subject,
                "ListDeadLetters",
                None,
            )
            .await?;
        }
        let store = self.flow.store();
        let letters = store
            .dead_letters_page(after.as_ref().map(|(id, kind)| (id.as_str(), *kind)), limit)
            .await?;
        let next_page_token = match letters.last() {
            Some(last) if letters.len() == limit as usize => encode_page_token(
                TOKEN_KIND,
                &format!("{}|{}", last.payment_id, last.kind.as_str()),
            ),
            _ => String::new(),
        };
        Ok(wire::ListDeadLettersResponse {
            dead_letters: letters.iter().map(dead_letter_to_wire).collect(),
            next_page_token,
            total_count: store.dead_letter_count().await?,
        })
    }

    pub(super) async fn handle_retry_dead_letter(
        &self,
        request: Request<wire::RetryDeadLetterRequest>,
    ) -> Result<wire::RetryDeadLetterResponse, Status> {
        let message = request.get_ref();
        let kind = match wire::OutboxKind::try_from(message.kind) {
            Ok(wire::OutboxKind::Apply) => OutboxKind::Apply,
            Ok(wire::OutboxKind::Reverse) => OutboxKind::Reverse,
            _ => {
                return Err(invalid_field(
                    "kind",
                    "must be OUTBOX_KIND_APPLY or OUTBOX_KIND_REVERSE",
                ));
            }
        };
        if message.payment_id.is_empty() || message.payment_id.len() > 64 {
            return Err(invalid_field("payment_id", "must be 1 to 64 characters"));
        }
        let letter = self
            .flow
            .store()
            .retry_dead_letter(&message.payment_id, kind)
            .await?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no dead letter {} {}",
                    kind.as_str(),
                    message.payment_id
                ))
            })?;
        tracing::warn!(payment_id = %letter.payment_id, kind = kind.as_str(), "dead letter put back in the outbox by an admin");
        Ok(wire::RetryDeadLetterResponse {
            dead_letter: Some(dead_letter_to_wire(&letter)),
        })
    }
}
