//! `/v1/files`: OpenAI's Files API for batch input. An upload (`multipart/form-data`,
//! `purpose=batch`, the file as JSONL) is streamed to disk and checked line by line as
//! it arrives; errors name the lines. A tenant lists, reads and deletes only its own
//! files: another tenant's id is 404, as an unknown one is.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Caller, Refusal};
use crate::domain::records::FileRecord;
use crate::gateway::{FILE_PURPOSE, FileError, Gateway, Upload};

/// OpenAI's file object.
fn object(file: &FileRecord) -> Value {
    json!({
        "id": file.id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": file.created_at,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": "processed",
        "expires_at": null,
        "status_details": null,
    })
}

/// `POST /v1/files`.
pub async fn upload(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, Refusal> {
    let mut multipart = multipart.map_err(|e| {
        Refusal::bad_parameter(
            "file",
            format!("send the file as multipart/form-data with fields 'file' and 'purpose' ({e})"),
        )
    })?;
    let mut purpose = None;
    let mut upload: Option<Upload> = None;
    while let Some(mut field) = multipart.next_field().await.map_err(unreadable)? {
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.map_err(unreadable)?),
            Some("file") => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
                let mut receiving = gateway
                    .files()
                    .receive(&tenant, &filename, gateway.model_kinds())
                    .await
                    .map_err(Refusal::file)?;
                while let Some(chunk) = field.chunk().await.map_err(unreadable)? {
                    receiving.push(&chunk).await.map_err(Refusal::file)?;
                }
                upload = Some(receiving);
            }
            // Other fields (`expires_after[…]`) are accepted and have no effect.
            _ => {}
        }
    }
    match purpose.as_deref() {
        Some(FILE_PURPOSE) => {}
        Some(other) => {
            return Err(Refusal::bad_parameter(
                "purpose",
                format!("purpose \"{other}\" is not supported; files are kept for \"batch\""),
            ));
        }
        None => {
            return Err(Refusal::bad_parameter(
                "purpose",
                "'purpose' is required: \"batch\"".into(),
            ));
        }
    }
    let Some(upload) = upload else {
        return Err(Refusal::bad_parameter(
            "file",
            "'file' is required: the batch's requests as JSONL".into(),
        ));
    };
    let file = upload.finish().await.map_err(Refusal::file)?;
    tracing::info!(%tenant, file = %file.id, bytes = file.bytes, requests = file.lines, "file uploaded");
    Ok(axum::Json(object(&file)).into_response())
}

fn unreadable(error: axum::extract::multipart::MultipartError) -> Refusal {
    Refusal::bad_parameter(
        "file",
        format!(
            "the multipart body could not be read: {}",
            error.body_text()
        ),
    )
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    purpose: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
    order: Option<String>,
}

/// `GET /v1/files`: newest first (`order=asc` for oldest first), `limit` at a time
/// (default 10,000), after the id `after`.
pub async fn list(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    Query(query): Query<ListQuery>,
) -> Result<Response, Refusal> {
    let mut files = gateway.files().list(&tenant);
    if query.order.as_deref() == Some("asc") {
        files.reverse();
    }
    files.retain(|f| query.purpose.as_deref().is_none_or(|p| p == f.purpose));
    if let Some(after) = &query.after {
        let start = files
            .iter()
            .position(|f| &f.id == after)
            .map_or(0, |i| i + 1);
        files.drain(..start);
    }
    let limit = query.limit.unwrap_or(10_000).clamp(1, 10_000);
    let has_more = files.len() > limit;
    files.truncate(limit);
    let data: Vec<Value> = files.iter().map(object).collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "first_id": files.first().map(|f| f.id.clone()),
        "last_id": files.last().map(|f| f.id.clone()),
        "has_more": has_more,
    }))
    .into_response())
}

/// `GET /v1/files/{id}`.
pub async fn retrieve(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let file = gateway
        .files()
        .get(&tenant, &id)
        .ok_or_else(|| Refusal::file(FileError::NotFound(id)))?;
    Ok(axum::Json(object(&file)).into_response())
}

/// `GET /v1/files/{id}/content`: the file as it was uploaded, streamed from disk.
pub async fn content(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let files = gateway.files();
    let file = files
        .get(&tenant, &id)
        .ok_or_else(|| Refusal::file(FileError::NotFound(id.clone())))?;
    let path = files.path(&file.id);
    let opened = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Refusal::file(FileError::Io(format!("{}: {e}", path.display()))))?;
    let chunks = futures_util::stream::unfold(opened, |mut opened| async move {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0; 64 << 10];
        match opened.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(Bytes::from(buffer)), opened))
            }
            Err(error) => Some((Err(error), opened)),
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(file.bytes));
    Ok(response)
}

/// `DELETE /v1/files/{id}`.
pub async fn delete(
    State(gateway): State<Arc<Gateway>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let file = gateway
        .files()
        .delete(&tenant, &id)
        .await
        .map_err(Refusal::file)?;
    tracing::info!(%tenant, file = %file.id, "file deleted");
    Ok(axum::Json(json!({"id": file.id, "object": "file", "deleted": true})).into_response())
}
