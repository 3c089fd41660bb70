#!/bin/sh
# docker compose's one-shot `s3-volume` step: write the store's S3 identities from .env and
# hand the volumes, and all they hold, to the services' user (UID 10001). Two identities: the admin (the trainer
# and the sample-data step) and `serving`, which may only list and read the models bucket
# (the puller). The same file as tools/seaweed.py's identities() (tests hold them equal).
# POSIX sh (busybox). CONFIG names the file to write.
set -eu
CONFIG="${CONFIG:-/config/s3.json}"
for value in "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" \
             "$SERVING_ACCESS_KEY_ID" "$SERVING_SECRET_ACCESS_KEY"; do
  case "$value" in
    "" | *[!A-Za-z0-9._-]*)
      echo "error: the credentials in .env must be non-empty letters, digits, '.', '_' or '-'" >&2
      exit 2 ;;
  esac
done
if [ "$AWS_ACCESS_KEY_ID" = "$SERVING_ACCESS_KEY_ID" ]; then
  echo "error: SERVING_ACCESS_KEY_ID must differ from AWS_ACCESS_KEY_ID" >&2
  exit 2
fi
umask 077
printf '{"identities": [{"name": "admin", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "List", "Tagging", "Write"]}, {"name": "serving", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Read:models", "List:models"]}]}\n' \
  "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" \
  "$SERVING_ACCESS_KEY_ID" "$SERVING_SECRET_ACCESS_KEY" > "$CONFIG"
if [ "$#" -gt 0 ]; then
  # Recursively: a volume Docker filled from an image keeps the image's owners inside.
  chown -R 10001:10001 "$CONFIG" "$@"
fi
