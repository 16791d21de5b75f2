//! Picks the API family of a request (OpenAI and vLLM, Anthropic or Gemini)
//! by its path, applies the knobs every family shares (faults, delays,
//! truncation, header echo) and lets the family answer.

use super::common::{append_field, first_sighting, Action, Body, Fault, Knobs, Reply, Truncation};
use super::request::Request;
use super::{anthropic, gemini, openai, MockConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Family {
    fn of(req: &Request) -> Family {
        let path = req.route();
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Family::Anthropic
        } else if path.starts_with("/v1beta/")
            // Gemini's `POST /v1/models/{model}:{method}`; OpenAI model ids
            // may contain colons too, but are only ever read with GET.
            || (path.starts_with("/v1/models/") && path.contains(':') && req.method == "POST")
        {
            Family::Gemini
        } else {
            Family::OpenAi
        }
    }

    fn route(self, cfg: &MockConfig, req: &Request, knobs: &Knobs) -> Reply {
        match self {
            Family::OpenAi => openai::route(cfg, req, knobs),
            Family::Anthropic => anthropic::route(cfg, req, knobs),
            Family::Gemini => gemini::route(cfg, req, knobs),
        }
    }

    fn invalid_knob(self, message: String) -> Reply {
        match self {
            Family::OpenAi => openai::invalid_knob(message),
            Family::Anthropic => anthropic::invalid_knob(message),
            Family::Gemini => gemini::invalid_knob(message),
        }
    }

    fn overloaded(self, req: &Request, knobs: &Knobs) -> Reply {
        match self {
            Family::OpenAi => openai::overloaded(req, knobs),
            Family::Anthropic => anthropic::overloaded(knobs),
            Family::Gemini => gemini::overloaded(knobs),
        }
    }

    fn finish(self, reply: Reply) -> Reply {
        match self {
            Family::OpenAi => openai::finish(reply),
            Family::Anthropic => anthropic::finish(reply),
            Family::Gemini => gemini::finish(reply),
        }
    }
}

/// Decides how to answer one request.
pub(crate) fn handle(cfg: &MockConfig, req: &Request) -> Action {
    let family = Family::of(req);
    let mut knobs = match Knobs::parse(cfg, req) {
        Ok(knobs) => knobs,
        Err(message) => return Action::Reply(family.finish(family.invalid_knob(message))),
    };
    if let Some(token) = req.header("x-mock-fault-once") {
        if !first_sighting(token) {
            knobs.fault = None;
        }
    }
    let after = knobs.drop_after;
    let truncation = match knobs.fault {
        Some(Fault::Reset) => return Action::Reset,
        Some(Fault::Close) => return Action::Close,
        Some(Fault::Hang) => return Action::Hang,
        Some(Fault::DropMidStream) => Some(Truncation::Close { after }),
        Some(Fault::ResetMidStream) => Some(Truncation::Reset { after }),
        Some(Fault::StallMidStream) => Some(Truncation::Stall { after }),
        Some(Fault::ErrorEvent) => Some(Truncation::ErrorEvent { after }),
        Some(Fault::EndEarly) => Some(Truncation::End { after }),
        None => None,
    };
    let mut reply = family.route(cfg, req, &knobs);
    if matches!(truncation, Some(Truncation::ErrorEvent { .. }))
        && matches!(reply.body, Body::Json(_))
        && reply.status < 400
    {
        // A unary answer cannot fail half-way: it fails as a whole.
        reply = family.overloaded(req, &knobs);
    }
    match reply.body {
        Body::Json(_) => reply.latency = knobs.latency,
        Body::Sse(_) => {
            reply.ttft = knobs.ttft;
            reply.itl = knobs.itl;
        }
    }
    // Only successful answers are cut short: errors are sent whole.
    if reply.status < 400 {
        reply.truncation = truncation;
    }
    let mut reply = family.finish(reply);
    if knobs.echo_headers {
        if let Body::Json(body) = &mut reply.body {
            let names: Vec<&str> = req.headers.iter().map(|(k, _)| k.as_str()).collect();
            append_field(body, "mock_echo_headers", &names);
        }
    }
    if knobs.echo_auth {
        // As some proxies and self-hosted servers do: the credential the request carried,
        // echoed in a response header and (for errors) in the body.
        let auth = ["authorization", "x-api-key", "x-goog-api-key", "api-key"]
            .iter()
            .find_map(|h| req.header(h))
            .unwrap_or_default()
            .to_owned();
        if let (Body::Json(body), true) = (&mut reply.body, reply.status >= 400) {
            append_field(body, "mock_echo_authorization", &auth);
        }
        reply.headers.push(("x-mock-echo-authorization", auth));
    }
    Action::Reply(reply)
}
