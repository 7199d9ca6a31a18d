// The API-key gateway in front of Ollama, in nginx's own JavaScript (njs, Debian's
// libnginx-mod-http-js, njs 0.7+): no Python hop in the request path. nginx/gateway.conf says
// which location calls what.
//
// The allow-list is a JSON file of SHA-256 hashes of the keys (never the keys themselves):
//   {"keys": {"<sha256 hex of the key>": {"name": "alice", "models": ["llama3.2", "qwen2.5:0.5b"]},
//             "<sha256 hex>": {"name": "batch", "models": ["*"]},
//             "<sha256 hex>": {"name": "ops", "models": ["*"], "admin": true}}}
// Make a key and its line:  key=$(openssl rand -hex 32); printf %s "$key" | sha256sum
// It is read on every request (a few KB, from the page cache), so edits apply at once, with no
// reload; a file that cannot be read or parsed refuses every request (500), it never opens up.
//
//   inference(r)  model-bearing POSTs: a valid key (else 401) and the body's "model" on that
//                 key's list (else 403; no model or a body that is not JSON: 400), then the
//                 request goes on to @ollama with its body, unbuffered streaming back.
//   listing(r)    the routes that name no model (tags, ps, version, /v1/models, /): a valid key.
//   modelPath(r)  /v1/models/<name>: a valid key whose list has that model.
//   authorizeAdmin(r)  the auth_request of every other route (pull, push, create, copy,
//                 delete, blobs, ...): 204 for a key with "admin": true, 401 or 403 otherwise;
//                 no body is read, so uploads stream through.
//
// The key is never logged: nothing here writes it anywhere, the log format has no
// Authorization, and the header is removed before the request reaches Ollama.

var fs = require('fs');
var crypto = require('crypto');

function reply(r, status, message) {
    if (status === 401) {
        r.headersOut['WWW-Authenticate'] = 'Bearer realm="ollama"';
    }
    r.headersOut['Content-Type'] = 'application/json; charset=utf-8';
    // Ollama's own error shape, so its clients show the message
    r.return(status, JSON.stringify({error: message}) + '\n');
}

function loadKeys(r) {
    var path = r.variables.gateway_keys_file;
    try {
        var doc = JSON.parse(fs.readFileSync(path));
        if (doc === null || typeof doc.keys !== 'object' || doc.keys === null) {
            throw new Error('no "keys" object');
        }
        return doc.keys;
    } catch (e) {
        r.error('ollama gateway: cannot use the allow-list ' + path + ': ' + e.message);
        return null;
    }
}

// The caller's entry of the allow-list: {name, models, admin}, or null (then reply() was sent
// or must be: the caller decides the status through the returned code).
function caller(r, keys) {
    var header = r.headersIn.Authorization || '';
    var m = /^\s*Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) {
        return {status: 401, message: 'an API key is required: Authorization: Bearer <key>'};
    }
    var digest = crypto.createHash('sha256').update(m[1]).digest('hex');
    var entry = Object.prototype.hasOwnProperty.call(keys, digest) ? keys[digest] : null;
    if (entry === null || typeof entry !== 'object' || !Array.isArray(entry.models)) {
        return {status: 401, message: 'unknown API key'};
    }
    r.variables.gateway_user = String(entry.name || digest.substring(0, 12));
    return {status: 200, entry: entry};
}

// "llama3.2" and "llama3.2:latest" are one model; so are "library/x" and "x", and the
// registry-qualified form Ollama itself reports.
function normalise(name) {
    var n = String(name).trim().toLowerCase();
    n = n.replace(/^registry\.ollama\.ai\//, '').replace(/^library\//, '');
    var last = n.substring(n.lastIndexOf('/') + 1);
    if (last.indexOf(':') < 0) {
        n = n + ':latest';
    }
    return n;
}

function allowed(entry, model) {
    var want = normalise(model);
    for (var i = 0; i < entry.models.length; i++) {
        var m = entry.models[i];
        if (m === '*' || normalise(m) === want) {
            return true;
        }
    }
    return false;
}

// The caller of a request: its allow-list entry (status 200), else the status and message to
// answer (500: the allow-list cannot be read; 401: no or an unknown key).
function identify(r) {
    var keys = loadKeys(r);
    if (keys === null) {
        return {status: 500, message: 'the gateway cannot read its allow-list'};
    }
    return caller(r, keys);
}

// Proxy to Ollama when the entry allows the model, else 403 naming it.
function passIfAllowed(r, entry, model) {
    r.variables.gateway_model = normalise(model).substring(0, 200);
    if (!allowed(entry, model)) {
        return reply(r, 403, 'model "' + model.substring(0, 200) + '" is not allowed for this key');
    }
    r.internalRedirect('@ollama');
}

function inference(r) {
    var who = identify(r);
    if (who.status !== 200) {
        return reply(r, who.status, who.message);
    }
    var text = r.requestText;
    if (text === undefined) {
        // spilled to a temporary file: larger than client_body_buffer_size
        return reply(r, 413, 'request body too large for the gateway');
    }
    var body;
    try {
        body = JSON.parse(text);
    } catch (e) {
        return reply(r, 400, 'the request body is not JSON');
    }
    var model = body !== null && typeof body === 'object' ? (body.model || body.name) : undefined;
    if (typeof model !== 'string' || model === '') {
        return reply(r, 400, 'the request names no model');
    }
    passIfAllowed(r, who.entry, model);
}

// GET /api/tags, /api/ps, /api/version, /v1/models, /: any valid key (they name no model).
function listing(r) {
    var who = identify(r);
    if (who.status !== 200) {
        return reply(r, who.status, who.message);
    }
    r.internalRedirect('@ollama');
}

// /v1/models/<name> names its model in the path: checked like a body's "model".
function modelPath(r) {
    var who = identify(r);
    if (who.status !== 200) {
        return reply(r, who.status, who.message);
    }
    var model = r.uri.substring('/v1/models/'.length);
    passIfAllowed(r, who.entry, model);
}

// The auth_request of every other route (pull, push, create, copy, delete, blobs, ...): a key
// with "admin": true. Runs as a subrequest, so the upload body is never read here: it streams
// to Ollama unbuffered. 204 allows; 401/403 are turned into JSON by gateway.conf's error_page.
function authorizeAdmin(r) {
    var who = identify(r);
    if (who.status !== 200) {
        return r.return(who.status);
    }
    r.headersOut['X-Gateway-User'] = r.variables.gateway_user;
    r.return(who.entry.admin === true ? 204 : 403);
}

export default {inference, listing, modelPath, authorizeAdmin, normalise};
