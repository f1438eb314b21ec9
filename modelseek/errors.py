"""The one error hierarchy of Modelseek; `http_status` maps each error to its HTTP answer."""


class ModelseekError(Exception):
    """Base of every error Modelseek raises on purpose.

    Attributes:
        code: a stable machine-readable name, sent as `error.code` in HTTP answers.
        http_status: the status an HTTP answer carries for this error.
    """

    code = "internal"
    http_status = 500


class BadQuery(ModelseekError):
    """The request itself is wrong: empty text, unknown method, bad `k`, malformed JSON."""

    code = "bad_query"
    http_status = 400


class BadImage(BadQuery):
    """An uploaded image cannot be decoded (empty, truncated, not an image)."""

    code = "bad_image"
    http_status = 400


class PayloadTooLarge(BadQuery):
    """A request body or image exceeds the configured limit."""

    code = "payload_too_large"
    http_status = 413


class NotFound(ModelseekError):
    """A model id or route that does not exist."""

    code = "not_found"
    http_status = 404


class Forbidden(ModelseekError):
    """An admin route called without the right token, or while it is disabled."""

    code = "forbidden"
    http_status = 403


class CatalogError(ModelseekError):
    """A catalog file is invalid: unknown field, duplicate id, missing source folder."""

    code = "bad_catalog"
    http_status = 400


class IndexCorrupt(ModelseekError):
    """An index on storage is missing, incomplete or fails its checksum."""

    code = "index_corrupt"
    http_status = 500


class IndexRefused(ModelseekError):
    """A newly published index version cannot be served: corrupt, or in another space."""

    code = "index_refused"
    http_status = 409


class EncoderMismatch(ModelseekError):
    """An index was built in one feature space and is being served or queried in another."""

    code = "encoder_mismatch"
    http_status = 409


class ShardUnavailable(ModelseekError):
    """A scorer actor did not answer in time; the answer lacks that shard's models."""

    code = "shard_unavailable"
    http_status = 503


class EncoderUnavailable(ModelseekError):
    """An encoder cannot be built: weights neither cached nor downloadable, a bad checkpoint."""

    code = "encoder_unavailable"
    http_status = 503
