// The gateway's decisions that nginx alone cannot make, in njs (nginx's JavaScript,
// Debian's libnginx-mod-http-js 0.7). gateway/nginx.conf.template imports this file.
//
// - client(r):  who is calling. A static client key (the clients file, NAME=KEY lines,
//               read on every request: a changed file counts at once, no reload), or a JSON
//               Web Token signed with the configured HS256 secret: "jwt:<sub>". "" when
//               neither: the request is refused with 401. Synchronous, so that nginx's
//               rate and open-request limits (which run before any asynchronous step)
//               can key on it. The clients file is judged whole on every read (its rules:
//               parseClients, the same as gateway/nginx.py's), and a key or a signature is
//               compared in constant time (secretMac).
// - nodeKey(r): the node's inference key, read from its key_file.json on every request, so
//               that a TorchServe key rotation needs no nginx reload.
// - rotating(r): while a node's key rotates (common/keys.py holds a lock file beside
//               key_file.json around the switch), requests to that node come here: each
//               goes on at once, and one that TorchServe refuses for its key is sent once
//               more when the file holds the new key: a rotation loses none.
//
// Nothing here quotes a key or a token back, nor logs one. What is logged (at crit, the
// config's error_log level) is a clients file's line that is ignored, by its number only, and
// a JWT secret that cannot be used.

var fs = require('fs');
var crypto = require('crypto');

var TOKEN = /^[A-Za-z0-9._~+\/-]+=*$/;       // RFC 6750 b64token
var NODE_KEY = /^[A-Za-z0-9_-]{1,512}$/;      // what TorchServe writes
var SUBJECT = /^[A-Za-z0-9._@:+-]{1,128}$/;   // a subject that can name a client in logs and limits
var LEEWAY_S = 30;                            // clock skew allowed on exp, nbf and iat
// The clients' rules (gateway/nginx.py CLIENT_KEY, CLIENT_NAME, MIN_JWT_SECRET_BYTES: the
// same, tests/unit/test_gateway_js.py runs one table through both): a key is 16 to 512
// characters in all of RFC 6750's b64token; a name has no ':', so that no client can pass
// for a token's "jwt:<sub>".
var CLIENT_KEY = /^(?=.{16,512}$)[A-Za-z0-9._~+\/-]+=*$/;
var CLIENT_NAME = /^[A-Za-z0-9._-]{1,64}$/;
var MIN_SECRET_BYTES = 32;                    // HS256's key: the hash's length at least
var JWS_PART = /^[A-Za-z0-9_-]+$/;            // base64url without padding (RFC 7515)
var MAX_AUTHORIZATION = 8192;
// nginx's NGX_LOG_CRIT: the config's error_log level (ngx.WARN and ngx.ERR would not pass it).
// ngx.log passes the number through; nothing is added to the line (no client, no request).
var LOG_CRIT = 3;
var LOCK_POLL_MS = 10;
// What a request sent on by rotating() takes back from its answer besides the body: the
// type, and the Retry-After of the handler's 503 (handlers/sentiment_handler.py)
var ANSWER_HEADERS = ['Content-Type', 'Retry-After'];

function readText(path) {
    try {
        return fs.readFileSync(path, 'utf8');
    } catch (e) {
        return null;
    }
}

// Whether anchored `re` matches all of `s`, a string: njs's `$` (PCRE's) matches before a
// final "\n" too, which would let "name\n" pass, and a newline into a header sent on.
function whole(re, s) {
    return typeof s === 'string' && s.indexOf('\n') < 0 && re.test(s);
}

// Spaces, tabs and "\r" at either end left out (gateway/nginx.py _strip: the same)
function strip(s) {
    return s.replace(/^[ \t\r]+/, '').replace(/[ \t\r]+$/, '');
}

function logCrit(message) {
    ngx.log(LOG_CRIT, message);
}

// What is wrong with a client's name or key ("name", "key"), or null: gateway/nginx.py's
// client_problem.
function clientProblem(name, key) {
    if (!whole(CLIENT_NAME, name)) {
        return 'name';
    }
    if (!whole(CLIENT_KEY, key)) {
        return 'key';
    }
    return null;
}

// A clients file's text judged line by line, exactly as gateway/nginx.py's parse_clients
// judges it: {taken: [[line, name, key], ...], refused: [[line, problem], ...]}, lines
// numbered from 1 in order. Lines are split on "\n"; spaces, tabs and "\r" around a line, a
// name or a key are left out; blank lines and '#' comments are skipped. A line that is not
// NAME=KEY ("form") or whose name or key breaks its rule is refused, and so is every line of
// a key that lines of two names have ("ambiguous": which client would it be?).
function parseClients(text) {
    var lines = text.split('\n');
    var candidates = [], refused = [];
    var owners = Object.create(null);  // key -> {name: true} of the lines that have it
    for (var i = 0; i < lines.length; i++) {
        var line = strip(lines[i]);
        if (line === '' || line[0] === '#') {
            continue;
        }
        var eq = line.indexOf('=');
        if (eq < 0) {
            refused.push([i + 1, 'form']);
            continue;
        }
        var name = strip(line.slice(0, eq)), key = strip(line.slice(eq + 1));
        var problem = clientProblem(name, key);
        if (problem !== null) {
            refused.push([i + 1, problem]);
            continue;
        }
        candidates.push([i + 1, name, key]);
        owners[key] = owners[key] || Object.create(null);
        owners[key][name] = true;
    }
    var taken = [];
    for (var j = 0; j < candidates.length; j++) {
        if (Object.keys(owners[candidates[j][2]]).length > 1) {
            refused.push([candidates[j][0], 'ambiguous']);
        } else {
            taken.push(candidates[j]);
        }
    }
    refused.sort(function (a, b) { return a[0] - b[0]; });
    return {taken: taken, refused: refused};
}

// What secrets are compared as, so that a comparison takes the same time whatever they hold:
// their HMAC-SHA256 under a random key of this function's own (one per request). How far a
// comparison of two such digests gets says nothing of the secret, nor of a guess that
// shares its first characters.
function secretMac() {
    var key = Buffer.from(globalThis.crypto.getRandomValues(new Uint8Array(32)));
    return function (s) {
        return crypto.createHmac('sha256', key).update(s).digest('base64');
    };
}

// The name of the client whose key `token` is, or "". Every line of the file is judged
// (the ignored ones logged, by their numbers) and the token compared with every key taken,
// none skipped once one matched: how long it takes does not say which line matched.
function staticClient(clientsFile, token) {
    var text = readText(clientsFile);
    if (text === null) {
        return '';
    }
    var clients = parseClients(text);
    if (clients.refused.length > 0) {
        logCrit('clients file: ignored line(s) ' + clients.refused.map(function (bad) {
            return bad[0] + ' (' + bad[1] + ')';
        }).join(', '));
    }
    var mac = secretMac();
    var wanted = mac(token);
    var name = '';
    for (var i = 0; i < clients.taken.length; i++) {
        var match = mac(clients.taken[i][2]) === wanted;
        name = match ? clients.taken[i][1] : name;
    }
    return name;
}

function b64json(part) {
    return JSON.parse(Buffer.from(part, 'base64url').toString());
}

function isObject(value) {
    return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function audienceMatches(aud, wanted) {
    if (typeof aud === 'string') {
        return aud === wanted;
    }
    return Array.isArray(aud) && aud.indexOf(wanted) >= 0;
}

function isAsciiSpace(byte) {
    return byte === 0x20 || (byte >= 0x09 && byte <= 0x0d);
}

// The HS256 secret in `path` as gateway/nginx.py's jwt_secret takes it: the file's bytes,
// ASCII whitespace at either end left out. null (and logged) when the file cannot be read
// or the secret is shorter than MIN_SECRET_BYTES: then no token is taken.
function jwtSecret(path) {
    var bytes;
    try {
        bytes = fs.readFileSync(path);
    } catch (e) {
        logCrit('the JWT secret file cannot be read: every token is refused');
        return null;
    }
    var start = 0, end = bytes.length;
    while (start < end && isAsciiSpace(bytes[start])) {
        start++;
    }
    while (end > start && isAsciiSpace(bytes[end - 1])) {
        end--;
    }
    if (end - start < MIN_SECRET_BYTES) {
        logCrit('the JWT secret is shorter than ' + MIN_SECRET_BYTES + ' bytes: every token is refused');
        return null;
    }
    return bytes.slice(start, end);
}

// "jwt:<sub>" for a token that passes every check, else "". The settings are checked again
// here (gateway/nginx.py JwtSettings checks them at start): without an audience, an issuer,
// a maximum lifetime and a secret of MIN_SECRET_BYTES, no token is taken.
function jwtSubject(r, token) {
    var audience = r.variables.jwt_audience;
    var issuer = r.variables.jwt_issuer;
    var maxLifetime = Number(r.variables.jwt_max_lifetime);
    if (!audience || !issuer || !Number.isInteger(maxLifetime) || maxLifetime <= 0) {
        return '';
    }
    var parts = token.split('.');
    if (parts.length !== 3 || !whole(JWS_PART, parts[0]) || !whole(JWS_PART, parts[1])
        || !whole(JWS_PART, parts[2])) {
        return '';
    }
    var header, claims;
    try {
        header = b64json(parts[0]);
    } catch (e) {
        return '';
    }
    // The algorithm is ours to choose, never the token's: "none", RS256 with the secret
    // as a public key, anything but HS256 is refused; so is any extension it says is critical.
    if (!isObject(header) || header.alg !== 'HS256' || header.crit !== undefined) {
        return '';
    }
    var secret = jwtSecret(r.variables.jwt_secret_file);
    if (secret === null) {
        return '';
    }
    var expected = crypto.createHmac('sha256', secret).update(parts[0] + '.' + parts[1]).digest('base64url');
    var mac = secretMac();
    if (mac(expected) !== mac(parts[2])) {
        return '';
    }
    try {
        claims = b64json(parts[1]);
    } catch (e) {
        return '';
    }
    if (!isObject(claims)) {
        return '';
    }
    // exp: a whole number of seconds (1e400 parses as Infinity, which is not), not past and
    // at most the maximum lifetime ahead; nbf and iat, when given, finite and not ahead.
    var now = Date.now() / 1000;
    var exp = claims.exp;
    if (!Number.isInteger(exp) || exp + LEEWAY_S <= now || exp - now > maxLifetime + LEEWAY_S) {
        return '';
    }
    if (claims.nbf !== undefined && (!Number.isFinite(claims.nbf) || claims.nbf - LEEWAY_S > now)) {
        return '';
    }
    if (claims.iat !== undefined && (!Number.isFinite(claims.iat) || claims.iat - LEEWAY_S > now)) {
        return '';
    }
    if (!audienceMatches(claims.aud, audience) || claims.iss !== issuer) {
        return '';
    }
    if (!whole(SUBJECT, claims.sub)) {
        return '';
    }
    return 'jwt:' + claims.sub;
}

function client(r) {
    var auth = r.headersIn.Authorization;
    if (typeof auth !== 'string' || auth.length > MAX_AUTHORIZATION || auth.slice(0, 7) !== 'Bearer ') {
        return '';
    }
    var token = auth.slice(7);
    if (!whole(TOKEN, token)) {
        return '';
    }
    var name = staticClient(r.variables.clients_file, token);
    if (name) {
        return name;
    }
    if (r.variables.jwt_secret_file) {
        return jwtSubject(r, token);
    }
    return '';
}

function nodeKey(r) {
    var text = readText(r.variables.node_dir + '/' + r.variables.key_file);
    try {
        var key = JSON.parse(text).inference.key;
        return whole(NODE_KEY, key) ? key : '';
    } catch (e) {
        return '';
    }
}

// Milliseconds since the rotation lock at `path` was taken: the time its taker recorded in
// it (common/keys.py, JSON {"taken_ms": ...}), else its mtime; null when there is none.
function lockAgeMs(path) {
    var stat;
    try {
        stat = fs.statSync(path);
    } catch (e) {
        return null;
    }
    var text = readText(path);
    if (text === null) {
        return null;  // removed meanwhile
    }
    var taken = stat.mtimeMs;
    try {
        var recorded = JSON.parse(text).taken_ms;
        if (typeof recorded === 'number' && isFinite(recorded)) {
            taken = recorded;
        }
    } catch (e) {
        // no readable time: its mtime
    }
    return Date.now() - taken;
}

// Whether a rotation may still hold the lock: it exists and its time is within maxAge of
// now (common/keys.py lock_is_fresh: the same rule). A stale one was left by a rotation
// that was killed: nothing waits for it.
function lockHeld(path, maxAge) {
    var age = lockAgeMs(path);
    return age !== null && age <= maxAge && age >= -maxAge;
}

// Whether TorchServe refused a request for its key, before running it: its 400 with
// type InvalidKeyException. What the handler refuses (its own 400s, with their messages)
// is not this, and is answered as it is.
function refusedForKey(reply) {
    if (reply.status !== 400 || !reply.responseBuffer) {
        return false;
    }
    try {
        return JSON.parse(reply.responseBuffer.toString()).type === 'InvalidKeyException';
    } catch (e) {
        return false;
    }
}

// While a node's key rotates (its server block sends its requests here while the lock
// file exists), each request goes on at once. One that TorchServe refuses for its key (it
// carried the key of before the switch, or none, read while TorchServe rewrote the file)
// is sent once more as soon as the file holds another whole key, or else once the lock is
// gone: TorchServe refused it before running it, so it runs once. Not "once the lock is
// gone" alone: a second rotation right after the first (the supervisor rotates both keys
// in turn) would keep it waiting through its own lock. The wait is capped at the config's
// $rotation_lock_max_age_ms (common/keys.py LOCK_MAX_AGE_S), and a stale lock, left by a
// rotation that was killed, is not waited for. A request refused again is answered so.
function rotating(r) {
    var lock = r.variables.node_dir + '/' + r.variables.rotation_lock;
    var maxAge = Number(r.variables.rotation_lock_max_age_ms) || 0;
    var path = r.uri.slice('/_rotating'.length);
    var options = {method: r.method, args: r.variables.args || ''};
    // Read here, the value the send below puts on the request: a subrequest shares its
    // parent's variables, and nginx keeps a variable's value once it is read.
    var sentKey = r.variables.node_key;
    // the answer as it came: its status, body and the headers the handler sets on it
    function answer(reply) {
        ANSWER_HEADERS.forEach(function (name) {
            var value = reply.headersOut[name];
            if (value) {
                r.headersOut[name] = value;
            }
        });
        r.return(reply.status, reply.responseBuffer || '');
    }
    var waited = 0, deadline = 0;
    function resendWhenSwitched() {
        var key = nodeKey(r);
        // the cap in time, and in polls (timers can run late on a busy machine, and the
        // unit tests' stub timers take no time)
        var inTime = waited < maxAge && Date.now() < deadline;
        if ((key === '' || key === sentKey) && inTime && lockHeld(lock, maxAge)) {
            waited += LOCK_POLL_MS;
            setTimeout(resendWhenSwitched, LOCK_POLL_MS);
            return;
        }
        // its own location and key variable ($node_key_resent): $node_key keeps the key
        // that was refused
        r.subrequest('/_resend' + path, options, answer);
    }
    r.subrequest('/_send' + path, options, function (reply) {
        if (refusedForKey(reply)) {
            deadline = Date.now() + maxAge;
            resendWhenSwitched();
        } else {
            answer(reply);
        }
    });
}

export default {client, nodeKey, rotating};
