#!/usr/bin/env bash
# Log in at the test OP with curl only: authorization code + PKCE S256, login picked by login_hint.
# usage: ISSUER=<OP_ISSUER value> ./drive.sh [user]        (default user: alice)
# env:   CLIENT_ID / CLIENT_SECRET (default gateway / gateway-secret), REDIRECT (default http://127.0.0.1:8080/auth/callback),
#        AUTH=basic|post (client authentication at the token endpoint), SCOPE, QUIET=1 (no decoded tokens on stderr),
#        EXTRA (more authorize parameters, e.g. '&prompt=consent'), JAR (cookie jar file to keep the OP session in)
# stdout: the token endpoint's JSON response. stderr: the callback URL and the decoded tokens.
# Exit 1 if the OP redirects back with an error (e.g. error=access_denied for an unknown user).
set -euo pipefail
: "${ISSUER:?set ISSUER to the OP_ISSUER value}"
USER_HINT=${1:-alice}
CLIENT_ID=${CLIENT_ID:-gateway}; CLIENT_SECRET=${CLIENT_SECRET:-gateway-secret}
REDIRECT=${REDIRECT:-http://127.0.0.1:8080/auth/callback}
SCOPE=${SCOPE:-openid profile email offline_access}
if [[ -z "${JAR:-}" ]]; then JAR=$(mktemp); trap 'rm -f "$JAR"' EXIT; fi
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
uri() { jq -rn --arg v "$1" '$v|@uri'; }
jwtpart() { local s; s=$(cut -d. -f"$2" <<<"$1" | tr '_-' '/+'); while (( ${#s} % 4 )); do s+='='; done; openssl base64 -d -A <<<"$s"; }

DISC=$(curl -sf "$ISSUER/.well-known/openid-configuration")
AUTH_EP=$(jq -r .authorization_endpoint <<<"$DISC"); TOKEN_EP=$(jq -r .token_endpoint <<<"$DISC")
VERIFIER=$(openssl rand 32 | b64url)
CHALLENGE=$(printf '%s' "$VERIFIER" | openssl dgst -sha256 -binary | b64url)
STATE=$(openssl rand -hex 8); NONCE=$(openssl rand -hex 8)
NEXT="$AUTH_EP?response_type=code&client_id=$(uri "$CLIENT_ID")&redirect_uri=$(uri "$REDIRECT")&scope=$(uri "$SCOPE")"
NEXT+="&state=$STATE&nonce=$NONCE&code_challenge=$CHALLENGE&code_challenge_method=S256&login_hint=$(uri "$USER_HINT")${EXTRA:-}"

# Follow redirects only while Location is on the OP; the first one elsewhere is the client's callback.
for _ in 1 2 3 4 5 6 7 8; do
  LOC=$(curl -s -o /dev/null -b "$JAR" -c "$JAR" -w '%{redirect_url}' "$NEXT")
  [[ -n "$LOC" ]] || { echo "no redirect from $NEXT" >&2; exit 1; }
  [[ "$LOC" == "$ISSUER"/* ]] || break
  NEXT="$LOC"
done
echo "callback: $LOC" >&2
[[ "$LOC" == "$REDIRECT"* ]] || { echo "redirected outside the OP to a non-callback URL" >&2; exit 1; }
[[ "$LOC" != *"error="* ]] || exit 1
CODE=$(sed -n 's/.*[?&]code=\([^&]*\).*/\1/p' <<<"$LOC")
[[ "$(sed -n 's/.*[?&]state=\([^&]*\).*/\1/p' <<<"$LOC")" == "$STATE" ]] || { echo "state mismatch" >&2; exit 1; }

if [[ "${AUTH:-basic}" == post ]]; then CREDS=(-d "client_id=$CLIENT_ID" --data-urlencode "client_secret=$CLIENT_SECRET")
else CREDS=(-u "$CLIENT_ID:$CLIENT_SECRET"); fi
TOK=$(curl -sS "${CREDS[@]}" -d grant_type=authorization_code -d "code=$CODE" \
  --data-urlencode "redirect_uri=$REDIRECT" -d "code_verifier=$VERIFIER" "$TOKEN_EP")
echo "$TOK"
jq -e .access_token <<<"$TOK" >/dev/null || exit 1
if [[ -z "${QUIET:-}" ]]; then
  for t in id_token access_token; do
    echo "== $t header:  $(jwtpart "$(jq -r .$t <<<"$TOK")" 1 | jq -c .)" >&2
    echo "== $t payload: $(jwtpart "$(jq -r .$t <<<"$TOK")" 2 | jq -c .)" >&2
  done
  echo "== refresh_token present: $(jq -r 'has("refresh_token")' <<<"$TOK")" >&2
fi
