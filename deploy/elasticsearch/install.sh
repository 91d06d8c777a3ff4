#!/bin/sh
# Installs tokenwatch's component and index templates into Elasticsearch.
# Usage: ES=https://elastic:PASSWORD@es.example:9200 deploy/elasticsearch/install.sh
# (add CURL_OPTS="--cacert ca.crt" for a private CA). Run once, before Filebeat ships.
set -eu
: "${ES:?set ES to the Elasticsearch URL, e.g. https://user:pass@localhost:9200}"
here=$(dirname "$0")
put() {
  curl -fsS ${CURL_OPTS:-} -X PUT "$ES/$1" -H 'Content-Type: application/json' --data-binary "@$here/$2"
  echo
}
put _component_template/tokenwatch-audit@mappings tokenwatch-audit@mappings.json
put _index_template/tokenwatch-audit tokenwatch-audit.index-template.json
