"""The demo shop's customers and orders: varied enough that every branch of the flows is taken
(regions, customers without an address, declined payments), and reproducible from a seed."""

import random
from typing import Any

from demo.systems.erp import BLOCKED_DOMAIN

FIRST_NAMES = (
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Radia", "Linus",
    "Frances", "Tim", "Sophie", "John", "Hedy", "Dennis", "Karen", "Niklaus", "Anita", "Guido",
)  # fmt: skip
LAST_NAMES = (
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson",
    "Perlman", "Torvalds", "Allen", "Berners-Lee", "Wilson", "Backus", "Lamarr", "Ritchie",
    "Spärck Jones", "Wirth", "Borg", "van Rossum",
)  # fmt: skip
MAIL_DOMAINS = ("example.com", "mail.example", "corp.example", "shop.example")
# (country, city, postal code, currency). The flows route US/CA/MX and JP/AU/SG/IN outside the
# EU; the gateway knows every one of these currencies.
PLACES = (
    ("DE", "Berlin", "10115", "EUR"),
    ("DE", "München", "80331", "EUR"),
    ("FR", "Paris", "75002", "EUR"),
    ("NL", "Amsterdam", "1012 JS", "EUR"),
    ("ES", "Madrid", "28013", "EUR"),
    ("IT", "Milano", "20121", "EUR"),
    ("IE", "Dublin", "D02 X285", "EUR"),
    ("GB", "London", "EC1A 1BB", "GBP"),
    ("US", "New York", "10001", "USD"),
    ("US", "Austin", "78701", "USD"),
    ("CA", "Toronto", "M5H 2N2", "CAD"),
    ("MX", "Ciudad de México", "06000", "MXN"),
    ("JP", "Tokyo", "100-0005", "JPY"),
    ("AU", "Sydney", "2000", "AUD"),
    ("SG", "Singapore", "049315", "SGD"),
    ("IN", "Bengaluru", "560001", "INR"),
)
STREETS = ("Market Street", "Hauptstraße", "Rue de Rivoli", "Keizersgracht", "Gran Vía", "Main St")
# Everyday items: at most 3 lines of 3 items stay under the gateway's decline threshold (900).
ITEMS = (
    ("SKU-1001", "Coffee beans 1 kg", "18.90"),
    ("SKU-1002", "Ceramic mug", "9.50"),
    ("SKU-1003", "Pour-over kettle", "54.00"),
    ("SKU-1004", "Paper filters (100)", "4.99"),
    ("SKU-1005", "Hand grinder", "89.00"),
    ("SKU-1006", "Milk frother", "39.90"),
    ("SKU-1007", "Tea sampler", "24.00"),
)
# One of these makes an order's total exceed 900: the gateway declines it.
BIG_TICKET = (
    ("SKU-9001", "Dual-boiler espresso machine", "1499.00"),
    ("SKU-9002", "Commercial grinder", "949.00"),
)
CHANNELS = ("web", "web", "web", "store", "phone", "partner")
UNKNOWN_CURRENCY = "XXX"  # ISO 4217's "no currency": the gateway refuses it


class Shop:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._orders = 0

    def customer(self, customer_id: str, *, blocked: bool = False) -> dict[str, Any]:
        """A new customer as the CRM's user enters it; one in seven has no address yet."""
        first, last = self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)
        domain = BLOCKED_DOMAIN if blocked else self.rng.choice(MAIL_DOMAINS)
        customer: dict[str, Any] = {
            "id": customer_id,
            "action": "created",
            "email": f"{_mailbox(first)}.{_mailbox(last)}@{domain}",
            "first_name": first,
            "last_name": last,
        }
        if self.rng.random() < 0.6:
            customer["phone"] = f"+{self.rng.randint(1, 99)} {self.rng.randint(100000, 9999999)}"
        if blocked or self.rng.random() > 1 / 7:  # a blocked customer must reach the ERP
            customer["address"] = self.address()
        if self.rng.random() < 0.3:
            customer["tags"] = self.rng.sample(["vip", "b2b", "newsletter", "wholesale"], 2)
        return customer

    def updated(self, customer: dict[str, Any]) -> dict[str, Any]:
        """The same customer, edited: a new phone, a move, an address added or removed."""
        changed = {**customer, "action": "updated"}
        roll = self.rng.random()
        if roll < 0.35:
            changed["phone"] = f"+{self.rng.randint(1, 99)} {self.rng.randint(100000, 9999999)}"
        elif roll < 0.85 or "address" not in changed:
            changed["address"] = self.address()
        else:
            del changed["address"]
        return changed

    def deleted(self, customer: dict[str, Any]) -> dict[str, Any]:
        return {**customer, "action": "deleted"}

    def address(self) -> dict[str, str]:
        country, city, postal_code, _ = self.rng.choice(PLACES)
        return {
            "line1": f"{self.rng.randint(1, 250)} {self.rng.choice(STREETS)}",
            "city": city,
            "postal_code": postal_code,
            "country": country,
        }

    def order(
        self, order_id: str, customer: dict[str, Any], *, currency: str | None = None
    ) -> dict[str, Any]:
        """An order placed by `customer`; one in seven is big enough to be declined (counted,
        not drawn: even a short run has some)."""
        address = customer.get("address") or self.address()
        lines = [
            self._line(self.rng.choice(ITEMS), self.rng.randint(1, 3))
            for _ in range(self.rng.randint(1, 3))
        ]
        self._orders += 1
        if self._orders % 7 == 3:
            lines.append(self._line(self.rng.choice(BIG_TICKET), 1))
        return {
            "id": order_id,
            "customer_id": customer["id"],
            "channel": self.rng.choice(CHANNELS),
            "currency": currency or _currency(address["country"]),
            "lines": lines,
            "shipping_address": address,
        }

    @staticmethod
    def _line(item: tuple[str, str, str], quantity: int) -> dict[str, Any]:
        sku, description, price = item
        return {"sku": sku, "description": description, "quantity": quantity, "unit_price": price}


def _currency(country: str) -> str:
    return next(currency for place, _, _, currency in PLACES if place == country)


def _mailbox(name: str) -> str:
    return "".join(c for c in name.lower() if c.isascii() and c.isalpha())
