/* Short-lived download links: POST /v1/transfers/{id}/links signs (job, artifact, expiry, tenant)
 * with HMAC-SHA256 under the server's signing key; GET /v1/links/{token} serves that artifact
 * to whoever holds the token, with no API key (a browser, a colleague, a script). */
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"

#define LINK_DEFAULT_SECONDS 3600
#define LINK_MAX_SECONDS (7 * 24 * 3600)
#define MAC_LEN 32

static const char *const artifacts[] = {"head", "report", "gradients"};
#define N_ARTIFACTS (sizeof artifacts / sizeof *artifacts)
/* the router takes path segments of up to 127 bytes (server/http.c) */
#define TOKEN_MAX 128

/* What a token carries; the MAC covers all of it. */
typedef struct signed_link {
    char job[32];
    const char *artifact; /* one of artifacts[]; its first letter in the token */
    long long expires;    /* unix seconds */
    long long tenant;
} signed_link;

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64url without padding (RFC 4648 section 5): the token is one path segment. Writes at most
 * cap bytes with the NUL; returns the length, or -1 when it does not fit. */
static int b64url_encode(const unsigned char *in, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        size_t chars = n - i >= 3 ? 4 : n - i + 1;
        if (o + chars >= cap)
            return -1;
        for (size_t k = 0; k < chars; k++)
            out[o++] = b64url[(v >> (18 - 6 * k)) & 63];
    }
    out[o] = 0;
    return (int)o;
}

/* The inverse, strict: only the alphabet, no padding, no dangling bits. Returns the byte count
 * or -1. */
static int b64url_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p = in[i] ? strchr(b64url, in[i]) : NULL;
        if (!p)
            return -1;
        acc = (acc << 6 | (unsigned)(p - b64url)) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits && (acc & ((1u << bits) - 1)))
        return -1;
    return (int)o;
}

static void link_mac(const rt_config *c, const char *payload, size_t n, unsigned char mac[MAC_LEN])
{
    unsigned int len = MAC_LEN;
    HMAC(EVP_sha256(), c->signing_key, (int)c->signing_key_len, (const unsigned char *)payload, n, mac, &len);
}

/* token = base64url(payload) "." base64url(HMAC-SHA256(key, payload)), payload =
 * "job.a.expires.tenant" (a: the artifact's first letter; job ids hold no '.'): 119 characters
 * at most with an 18-digit tenant id. -1 when it does not fit cap. */
static int link_sign(const rt_config *c, const signed_link *l, char *token, size_t cap)
{
    char payload[96];
    int n = snprintf(payload, sizeof payload, "%s.%c.%lld.%lld", l->job, l->artifact[0], l->expires, l->tenant);
    if (n < 0 || (size_t)n >= sizeof payload)
        return -1;
    unsigned char mac[MAC_LEN];
    link_mac(c, payload, (size_t)n, mac);
    int a = b64url_encode((const unsigned char *)payload, (size_t)n, token, cap);
    if (a < 0 || (size_t)a + 2 >= cap)
        return -1;
    token[a] = '.';
    return b64url_encode(mac, MAC_LEN, token + a + 1, cap - (size_t)a - 1) < 0 ? -1 : 0;
}

static bool digits(const char *s, long long *out)
{
    if (!*s || strlen(s) > 18)
        return false;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    *out = atoll(s);
    return true;
}

/* Checks a token's MAC (in constant time) before reading anything in it, then its fields and
 * its expiry. NULL when it is good, else why not (for the 403). */
static const char *link_verify(const rt_config *c, const char *token, signed_link *l)
{
    static const char bad[] = "this link is not valid (altered, or signed with another key)";
    const char *dot = strchr(token, '.');
    if (!dot)
        return bad;
    char payload[96];
    unsigned char mac[MAC_LEN + 3], want[MAC_LEN];
    int pn = b64url_decode(token, (size_t)(dot - token), (unsigned char *)payload, sizeof payload - 1);
    int mn = b64url_decode(dot + 1, strlen(dot + 1), mac, sizeof mac);
    if (pn <= 0 || mn != MAC_LEN)
        return bad;
    payload[pn] = 0;
    link_mac(c, payload, (size_t)pn, want);
    if (CRYPTO_memcmp(mac, want, MAC_LEN) != 0)
        return bad;
    /* signed by us: the fields are ours, parsed strictly all the same */
    char *f[4], *save = NULL, *p = payload;
    for (int i = 0; i < 4; i++, p = NULL)
        if (!(f[i] = strtok_r(p, ".", &save)))
            return bad;
    if (strtok_r(NULL, ".", &save) || strncmp(f[0], "job_", 4) || strlen(f[0]) >= sizeof l->job ||
        !digits(f[2], &l->expires) || !digits(f[3], &l->tenant))
        return bad;
    snprintf(l->job, sizeof l->job, "%s", f[0]);
    l->artifact = NULL;
    for (size_t i = 0; i < N_ARTIFACTS; i++)
        if (f[1][0] == artifacts[i][0] && !f[1][1])
            l->artifact = artifacts[i];
    if (!l->artifact)
        return bad;
    if ((long long)time(NULL) > l->expires)
        return "this link has expired; ask for a new one";
    return NULL;
}

void h_link_create(rt_req *r, rt_resp *o)
{
    json_t *body = req_json(r, o);
    if (!body)
        return;
    const char *key;
    json_t *v;
    signed_link l = {.expires = LINK_DEFAULT_SECONDS, .tenant = r->tenant_id};
    json_object_foreach(body, key, v) {
        if (!strcmp(key, "artifact")) {
            for (size_t i = 0; json_is_string(v) && i < N_ARTIFACTS; i++)
                if (!strcmp(json_string_value(v), artifacts[i]))
                    l.artifact = artifacts[i];
            if (!l.artifact) {
                reply_error(o, 400, "invalid_field", "artifact", "must be one of head, report, gradients");
                goto out;
            }
        } else if (!strcmp(key, "expires_in")) {
            if (!json_is_integer(v)) {
                reply_error(o, 400, "invalid_field", "expires_in", "must be an integer (seconds)");
                goto out;
            }
            l.expires = json_integer_value(v);
            if (l.expires < 1 || l.expires > LINK_MAX_SECONDS) {
                reply_error(o, 422, "unprocessable", "expires_in", "must be in [1, %d] seconds (7 days)",
                            LINK_MAX_SECONDS);
                goto out;
            }
        } else {
            reply_error(o, 400, "invalid_field", key, "unknown field");
            goto out;
        }
    }
    if (!l.artifact) {
        reply_error(o, 400, "missing_field", "artifact", "which artifact: head, report or gradients");
        goto out;
    }
    const char *p[2] = {r->tenant_id_s, r->params[0]};
    db_rc rc;
    PGresult *res = api_query(r, o, Q_JOB_STATE, 2, p, &rc);
    if (!res)
        goto out;
    bool found = rc == DB_OK && PQntuples(res) == 1;
    PQclear(res);
    if (rc != DB_OK) {
        reply_db(o, rc);
        goto out;
    }
    if (!found) {
        reply_error(o, 404, "not_found", NULL, "no such job");
        goto out;
    }
    size_t jl = strlen(r->params[0]);
    if (jl < sizeof l.job)
        memcpy(l.job, r->params[0], jl + 1);
    l.expires += (long long)time(NULL);
    char token[TOKEN_MAX], url[TOKEN_MAX + 16], when[32];
    if (jl >= sizeof l.job || link_sign(&r->app->cfg, &l, token, sizeof token)) {
        reply_error(o, 500, "internal", NULL, "the link does not fit");
        goto out;
    }
    snprintf(url, sizeof url, "/v1/links/%s", token);
    time_t t = (time_t)l.expires;
    struct tm tm;
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    reply_json(o, 201, json_pack("{s:s,s:s,s:s,s:s}", "url", url, "expires_at", when, "artifact", l.artifact, "job",
                                 l.job));
out:
    json_decref(body);
}

void h_link_get(rt_req *r, rt_resp *o)
{
    signed_link l;
    const char *why = link_verify(&r->app->cfg, r->params[0], &l);
    /* the token is a credential: keep it out of caches and of the Referer of pages it leads to */
    if (why) {
        reply_error(o, 403, "forbidden", NULL, "%s", why);
    } else {
        /* from here the request acts as the tenant that signed the link, for this job only */
        r->tenant_id = l.tenant;
        snprintf(r->tenant_id_s, sizeof r->tenant_id_s, "%lld", l.tenant);
        snprintf(r->params[0], sizeof r->params[0], "%s", l.job);
        if (!strcmp(l.artifact, "head"))
            h_transfer_head(r, o);
        else if (!strcmp(l.artifact, "report"))
            h_transfer_report(r, o);
        else
            reply_artifact(r, o, "gradients.png", "image/png", "gradients.png");
    }
    o->headers[0][0] = "Cache-Control";
    o->headers[0][1] = "private, no-store";
    o->headers[1][0] = "Referrer-Policy";
    o->headers[1][1] = "no-referrer";
}
