//! OpenAI image routes: generations (JSON), edits and variations
//! (`multipart/form-data`).

use serde_json::{json, Map, Value};

use super::common::{json_reply, random_hex, text_tokens, to_json, unix_now, Knobs, Reply};
use super::multipart::Part;
use super::openai::{
    file_sizes_header, form_field, optional_u64, parse_form, parse_object, ApiError,
};
use super::request::Request;
use super::MockConfig;

/// A 1x1 transparent PNG, base64-encoded.
const PNG_1X1: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

#[derive(Debug)]
struct Options {
    model: String,
    n: u64,
    size: String,
    quality: String,
    b64: bool,
    output_format: String,
    background: String,
}

fn is_gpt_image(model: &str) -> bool {
    model.starts_with("gpt-image")
}

impl Options {
    /// Reads the options from JSON fields or form fields through `get`.
    fn read(
        default_model: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Options, ApiError> {
        let model = get("model").unwrap_or_else(|| default_model.to_owned());
        let gpt_image = is_gpt_image(&model);
        let n = match get("n") {
            None => 1,
            Some(n) => match n.parse::<u64>() {
                Ok(n) if (1..=10).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid_request(format!(
                        "Invalid value for 'n': {n}. Expected a value between 1 and 10."
                    ))
                    .param("n"))
                }
            },
        };
        let size = get("size").unwrap_or_else(|| "auto".to_owned());
        let valid_size = size == "auto"
            || size
                .split_once('x')
                .is_some_and(|(w, h)| w.parse::<u32>().is_ok() && h.parse::<u32>().is_ok());
        if !valid_size {
            return Err(ApiError::invalid_request(format!(
                "Invalid value: '{size}'. Supported values are: '1024x1024', '1024x1536', \
                 '1536x1024', 'auto' (or WIDTHxHEIGHT)."
            ))
            .param("size"));
        }
        let size = if size == "auto" {
            "1024x1024".to_owned()
        } else {
            size
        };
        let quality = match get("quality").as_deref() {
            None | Some("auto") if gpt_image => "medium".to_owned(),
            None | Some("auto") => "standard".to_owned(),
            Some(q) => q.to_owned(),
        };
        let b64 = match get("response_format").as_deref() {
            None => gpt_image,
            Some("b64_json") => true,
            Some("url") => false,
            Some(other) => {
                return Err(ApiError::invalid_request(format!(
                    "Invalid value: '{other}'. Supported values are: 'url' and 'b64_json'."
                ))
                .param("response_format"))
            }
        };
        Ok(Options {
            model,
            n,
            size,
            quality,
            b64,
            output_format: get("output_format").unwrap_or_else(|| "png".to_owned()),
            background: get("background").unwrap_or_else(|| "opaque".to_owned()),
        })
    }

    /// Output tokens per image, as gpt-image-1 bills them.
    fn tokens_per_image(&self) -> u64 {
        let square = self.size.split_once('x').is_some_and(|(w, h)| w == h);
        match (self.quality.as_str(), square) {
            ("low", true) => 272,
            ("low", false) => 408,
            ("high" | "hd", true) => 4160,
            ("high" | "hd", false) => 6240,
            (_, true) => 1056,
            (_, false) => 1584,
        }
    }
}

/// Input tokens for an uploaded image of `bytes` bytes.
fn image_tokens(bytes: usize) -> u64 {
    65 + bytes.div_ceil(4096) as u64
}

fn answer(opts: &Options, prompt: Option<&str>, input_images: &[usize]) -> Reply {
    let data: Vec<Value> = (0..opts.n)
        .map(|_| {
            let mut item = Map::new();
            if opts.b64 {
                item.insert("b64_json".to_owned(), Value::from(PNG_1X1));
            } else {
                item.insert(
                    "url".to_owned(),
                    Value::from(format!(
                        "https://images.wharf-mock.invalid/img-{}.png",
                        random_hex(24)
                    )),
                );
            }
            if opts.model == "dall-e-3" {
                if let Some(prompt) = prompt {
                    item.insert("revised_prompt".to_owned(), Value::from(prompt));
                }
            }
            Value::Object(item)
        })
        .collect();
    let text_tokens = prompt.map_or(0, |p| text_tokens(p.chars().count()));
    let image_tokens: u64 = input_images.iter().map(|b| image_tokens(*b)).sum();
    let output_tokens = opts.n * opts.tokens_per_image();
    let input_tokens = text_tokens + image_tokens;
    let mut body = json!({
        "created": unix_now(),
        "data": data,
        "usage": {
            "total_tokens": input_tokens + output_tokens,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
        },
    });
    if is_gpt_image(&opts.model) {
        body["background"] = Value::from(opts.background.as_str());
        body["output_format"] = Value::from(opts.output_format.as_str());
        body["quality"] = Value::from(opts.quality.as_str());
        body["size"] = Value::from(opts.size.as_str());
    }
    json_reply(200, to_json(&body))
}

pub(crate) fn generations(_cfg: &MockConfig, req: &Request, _: &Knobs) -> Result<Reply, ApiError> {
    let obj = parse_object(req)?;
    let prompt = match obj.get("prompt") {
        Some(Value::String(p)) if !p.is_empty() => p.as_str(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(ApiError::missing("prompt"))
        }
        Some(other) => return Err(ApiError::invalid_type("prompt", "a string", other)),
    };
    if let Some(model) = obj.get("model").filter(|m| !m.is_null() && !m.is_string()) {
        return Err(ApiError::invalid_type("model", "a string", model));
    }
    optional_u64(&obj, "n")?;
    let opts = Options::read("dall-e-2", |name| match obj.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })?;
    Ok(answer(&opts, Some(prompt), &[]))
}

/// The uploaded images (`image`, or `image[]` for several).
fn images<'a>(form: &'a [Part<'a>]) -> Vec<&'a Part<'a>> {
    form.iter()
        .filter(|p| (p.name == "image" || p.name == "image[]") && p.filename.is_some())
        .collect()
}

fn upload(req: &Request, needs_prompt: bool) -> Result<Reply, ApiError> {
    let form = parse_form(req)?;
    let uploads = images(&form);
    if uploads.is_empty() {
        return Err(ApiError::missing("image"));
    }
    form_field(&form, "model").ok_or_else(|| ApiError::missing("model"))?;
    let prompt = form_field(&form, "prompt");
    if needs_prompt && prompt.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::missing("prompt"));
    }
    let opts = Options::read("dall-e-2", |name| form_field(&form, name))?;
    let mut sizes: Vec<usize> = uploads.iter().map(|p| p.data.len()).collect();
    if let Some(mask) = form
        .iter()
        .find(|p| p.name == "mask" && p.filename.is_some())
    {
        sizes.push(mask.data.len());
    }
    let mut reply = answer(&opts, prompt.as_deref(), &sizes);
    reply.headers.extend(file_sizes_header(&form));
    Ok(reply)
}

pub(crate) fn edits(_cfg: &MockConfig, req: &Request, _: &Knobs) -> Result<Reply, ApiError> {
    upload(req, true)
}

pub(crate) fn variations(_cfg: &MockConfig, req: &Request, _: &Knobs) -> Result<Reply, ApiError> {
    upload(req, false)
}
