# OMM_CONFIG for Hasher-Matcher-Actioner (HMA 1.1.7) subscribing to hashmesh nodes.
# HMA's environment needs `pip install 'hashmesh[threatexchange]'` besides HMA itself.
# Any field can be overridden by an environment variable with the OMM_ prefix
# (OMM_DATABASE_URI, OMM_TASK_FETCHER_INTERVAL_SECONDS=30, ...).
from OpenMediaMatch.storage.postgres.impl import DefaultOMMStore
from threatexchange.content_type.photo import PhotoContent
from threatexchange.content_type.video import VideoContent
from threatexchange.signal_type.md5 import VideoMD5Signal
from threatexchange.signal_type.pdq.signal import PdqSignal
from threatexchange.signal_type.sha256 import VideoSHA256Signal

from hashmesh.integrations.threatexchange import HashmeshSignalExchangeAPI, exchange_api

DATABASE_URI = "postgresql+psycopg2://media_match:hunter2@db/media_match"

PRODUCTION = True  # False adds the /dev endpoints (e.g. POST /dev/run_fetch)
ROLE_HASHER = True
ROLE_MATCHER = True
ROLE_CURATOR = True
UI_ENABLED = True

# Latency: a revocation stops matching after at most fetch + index + cache intervals.
TASK_FETCHER = True
TASK_INDEXER = True
TASK_INDEX_CACHE = True
TASK_FETCHER_INTERVAL_SECONDS = 240
TASK_INDEXER_INTERVAL_SECONDS = 60
TASK_INDEX_CACHE_INTERVAL_SECONDS = 30
INDEX_CACHE_MAX_STALE_SEC = 65

STORAGE_IFACE_INSTANCE = DefaultOMMStore(
    signal_types=[PdqSignal, VideoMD5Signal, VideoSHA256Signal],
    content_types=[PhotoContent, VideoContent],
    # `hashmesh` keeps one token for all its exchanges; exchange_api(NAME) is a type of its
    # own, `hashmesh_NAME`, with its own token (one per node whose token differs).
    exchange_types=[HashmeshSignalExchangeAPI, exchange_api("hotline"), exchange_api("police")],
)
