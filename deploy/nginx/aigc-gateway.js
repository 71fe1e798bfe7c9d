// njs helper for aigc-gateway.conf: nginx itself cannot URL-encode a variable.

// The original request URL ($scheme://$http_host$request_uri), percent-encoded as a query
// value: every byte but the RFC 3986 unreserved characters (A-Z a-z 0-9 - . _ ~) becomes %XX,
// the same as Python's urllib.parse.quote(url, safe="").
function escaped_original_url(r) {
    var v = r.rawVariables;
    var url = Buffer.concat([
        Buffer.from(r.variables.scheme + '://'),
        v.http_host || Buffer.from(''),
        v.request_uri || Buffer.from('/')
    ]);
    var hex = '0123456789ABCDEF';
    var out = '';
    for (var i = 0; i < url.length; i++) {
        var b = url[i];
        if ((b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122)
            || b === 45 || b === 46 || b === 95 || b === 126) {
            out += String.fromCharCode(b);
        } else {
            out += '%' + hex[b >> 4] + hex[b & 15];
        }
    }
    return out;
}

export default { escaped_original_url };
