"""Settings the command line reads from the environment (pydantic-settings), for the commands that use
ClickHouse without a scenario: ``fleet results push``, ``fleet dashboard --clickhouse`` and
``fleet compare clickhouse:...``.

Only the database and the table prefix are settings (``FLEET_CLICKHOUSE_DATABASE``,
``FLEET_CLICKHOUSE_PREFIX``). The URL, user and password stay in their variables
(``FLEET_CLICKHOUSE_URL``, ``_USER``, ``_PASSWORD``): the sink reads them when it connects and no
object holds them.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet.scenario import ClickHouseOut

__all__ = ["ClickHouseSettings"]


class ClickHouseSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_CLICKHOUSE_", extra="ignore", frozen=True)

    database: str = "fleet"
    prefix: str = "fleet_"

    def output(self, database: str | None = None, table_prefix: str | None = None) -> ClickHouseOut:
        """The ClickHouse output these settings (or the command's options, when given) describe."""
        return ClickHouseOut(url_env="FLEET_CLICKHOUSE_URL", user_env="FLEET_CLICKHOUSE_USER",
                             password_env="FLEET_CLICKHOUSE_PASSWORD", database=database or self.database,
                             table_prefix=table_prefix if table_prefix is not None else self.prefix)
