// The gateway's decisions that nginx alone cannot make, in njs (nginx's JavaScript,
// Debian's libnginx-mod-http-js 0.7). gateway/nginx.conf.template imports this file.
//
// - client(r):  who is calling. A static client key (the clients file, NAME=KEY lines,
//               read on every request: a changed file counts at once, no reload), or a JSON
//               Web Token signed with the configured HS256 secret: "jwt:<sub>". "" when
//               neither: the request is refused with 401. Synchronous, so that nginx's
//               rate and open-request limits (which run before any asynchronous step)
//               can key on it.
// - nodeKey(r): the node's inference key, read from its key_file.json on every request, so
//               that a TorchServe key rotation needs no nginx reload.
// - hold(r):    while a node's key rotates (clients/keys.py holds a lock file beside
//               key_file.json for the switch), requests to that node wait here until the
//               lock is gone, then go on with the new key: a rotation loses none.
//
// Nothing here logs, and nothing quotes a key or a token back.

var fs = require('fs');
var crypto = require('crypto');

var TOKEN = /^[A-Za-z0-9._~+\/-]+=*$/;       // RFC 6750 b64token
var NODE_KEY = /^[A-Za-z0-9_-]{1,512}$/;      // what TorchServe writes
var SUBJECT = /^[A-Za-z0-9._@:+-]{1,128}$/;   // a subject that can name a client in logs and limits
var LEEWAY_S = 30;                            // clock skew allowed on exp and nbf
var HOLD_POLL_MS = 10;
var HOLD_MAX_MS = 5000;

function readText(path) {
    try {
        return fs.readFileSync(path, 'utf8');
    } catch (e) {
        return null;
    }
}

function staticClient(clientsFile, token) {
    var text = readText(clientsFile);
    if (text === null) {
        return '';
    }
    var lines = text.split('\n');
    for (var i = 0; i < lines.length; i++) {
        var line = lines[i].trim();
        if (line === '' || line[0] === '#') {
            continue;
        }
        var eq = line.indexOf('=');
        if (eq > 0 && line.slice(eq + 1).trim() === token) {
            return line.slice(0, eq).trim();
        }
    }
    return '';
}

function b64json(part) {
    return JSON.parse(Buffer.from(part, 'base64url').toString());
}

function audienceMatches(aud, wanted) {
    if (typeof aud === 'string') {
        return aud === wanted;
    }
    return Array.isArray(aud) && aud.indexOf(wanted) >= 0;
}

// "jwt:<sub>" for a token that passes every check, else "".
function jwtSubject(r, token) {
    var parts = token.split('.');
    if (parts.length !== 3 || !parts[2]) {
        return '';
    }
    var secret = readText(r.variables.jwt_secret_file);
    if (!secret) {
        return '';
    }
    secret = secret.trim();
    var header, claims;
    try {
        header = b64json(parts[0]);
        claims = b64json(parts[1]);
    } catch (e) {
        return '';
    }
    // The algorithm is ours to choose, never the token's: "none", RS256 with the secret
    // as a public key, anything but HS256 is refused.
    if (!header || header.alg !== 'HS256' || header.crit !== undefined) {
        return '';
    }
    var expected = crypto.createHmac('sha256', secret).update(parts[0] + '.' + parts[1]).digest('base64url');
    if (expected !== parts[2].replace(/=+$/, '')) {
        return '';
    }
    if (!claims || typeof claims !== 'object') {
        return '';
    }
    var now = Date.now() / 1000;
    if (typeof claims.exp !== 'number' || claims.exp + LEEWAY_S <= now) {
        return '';
    }
    if (claims.nbf !== undefined && (typeof claims.nbf !== 'number' || claims.nbf - LEEWAY_S > now)) {
        return '';
    }
    var audience = r.variables.jwt_audience;
    if (audience && !audienceMatches(claims.aud, audience)) {
        return '';
    }
    var issuer = r.variables.jwt_issuer;
    if (issuer && claims.iss !== issuer) {
        return '';
    }
    if (typeof claims.sub !== 'string' || !SUBJECT.test(claims.sub)) {
        return '';
    }
    return 'jwt:' + claims.sub;
}

function client(r) {
    var auth = r.headersIn.Authorization;
    if (!auth || auth.length > 8192 || auth.slice(0, 7) !== 'Bearer ') {
        return '';
    }
    var token = auth.slice(7);
    if (!TOKEN.test(token)) {
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
    var text = readText(r.variables.node_dir + '/key_file.json');
    try {
        var key = JSON.parse(text).inference.key;
        return NODE_KEY.test(key) ? key : '';
    } catch (e) {
        return '';
    }
}

function exists(path) {
    try {
        fs.accessSync(path);
        return true;
    } catch (e) {
        return false;
    }
}

function hold(r) {
    var lock = r.variables.node_dir + '/key_rotation.lock';
    var waited = 0;
    function attempt() {
        if (exists(lock) && waited < HOLD_MAX_MS) {
            waited += HOLD_POLL_MS;
            setTimeout(attempt, HOLD_POLL_MS);
            return;
        }
        r.subrequest('/_resume' + r.uri.slice('/_held'.length), {method: r.method}, function (reply) {
            var type = reply.headersOut['Content-Type'];
            if (type) {
                r.headersOut['Content-Type'] = type;
            }
            r.return(reply.status, reply.responseBuffer || '');
        });
    }
    attempt();
}

export default {client, nodeKey, hold};
