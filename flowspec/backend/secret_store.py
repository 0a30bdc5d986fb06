"""The backend's secret store: Fernet tokens by name. It holds ciphertext only; encrypting and
decrypting (with the key in `$FLOWSPEC_SECRETS_KEY`) happen in flowspec.secrets, in the client."""
from __future__ import annotations

import time

from flowspec.backend.core import Store


class SecretStore(Store):
    def secret_put(self, name: str, token: str) -> None:
        with self._transaction() as tx:
            tx.run("INSERT INTO secrets (name, token, updated) VALUES (?, ?, ?)"
                   " ON CONFLICT (name) DO UPDATE SET token = excluded.token, updated = excluded.updated",
                   name, token, time.time())

    def secret_token(self, name: str) -> str | None:
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT token FROM secrets WHERE name = ?", name)
        return row[0] if row else None

    def secret_names(self) -> list[tuple[str, float]]:
        """(name, updated) of every stored secret, by name."""
        with self._transaction(write=False) as tx:
            return [(name, updated) for name, updated in tx.all("SELECT name, updated FROM secrets ORDER BY name")]

    def secret_delete(self, name: str) -> bool:
        with self._transaction() as tx:
            return tx.run("DELETE FROM secrets WHERE name = ?", name) > 0
