"""Tool sets for the tool-calling tests: 20 varied sets of OpenAI function tools, each with a user
question that one of them answers. Schemas cover what real tools use: enums, numbers with bounds,
booleans, arrays, nested objects, optional fields, ``$defs`` with ``$ref``, and tools without
parameters."""

from __future__ import annotations

from typing import Any


def fn(name: str, description: str, properties: dict[str, Any] | None = None, required: list[str] | None = None,
       **extra: Any) -> dict[str, Any]:
    f: dict[str, Any] = {"name": name, "description": description}
    if properties is not None:
        f["parameters"] = {"type": "object", "properties": properties, "required": required or [], **extra}
    return {"type": "function", "function": f}


WEATHER = fn("get_weather", "Get the current weather in a given city",
             {"city": {"type": "string", "description": "The city name, e.g. Paris"},
              "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"])
TIME = fn("get_time", "Get the current local time in a timezone",
          {"timezone": {"type": "string", "description": "IANA timezone, e.g. Europe/Paris"}}, ["timezone"])

TOOL_SETS: list[tuple[list[dict[str, Any]], str]] = [
    ([WEATHER], "What's the weather like in Paris?"),
    ([WEATHER, TIME], "What time is it in Tokyo?"),
    ([fn("add", "Add two integers", {"a": {"type": "integer"}, "b": {"type": "integer"}}, ["a", "b"])],
     "What is 17 plus 25?"),
    ([fn("search_web", "Search the web", {"query": {"type": "string"},
                                          "max_results": {"type": "integer", "minimum": 1, "maximum": 10}},
         ["query"])], "Find recent news about the Mars rover."),
    ([fn("send_email", "Send an email", {"to": {"type": "string"}, "subject": {"type": "string"},
                                         "body": {"type": "string"}, "urgent": {"type": "boolean"}},
         ["to", "subject", "body"])], "Email bob@example.com that the meeting moved to 3pm."),
    ([fn("convert_currency", "Convert an amount between currencies",
         {"amount": {"type": "number", "exclusiveMinimum": 0},
          "from_currency": {"type": "string", "enum": ["USD", "EUR", "JPY", "GBP"]},
          "to_currency": {"type": "string", "enum": ["USD", "EUR", "JPY", "GBP"]}},
         ["amount", "from_currency", "to_currency"])], "How many euros is 100 dollars?"),
    ([fn("create_event", "Create a calendar event",
         {"title": {"type": "string"}, "attendees": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
          "duration_minutes": {"type": "integer", "enum": [15, 30, 60]}}, ["title", "attendees"])],
     "Set up a 30 minute sync with Ann and Raj."),
    ([fn("get_stock_price", "Get the latest stock price", {"ticker": {"type": "string", "pattern": "^[A-Z]{1,5}$"}},
         ["ticker"])], "What is Apple's stock price?"),
    ([fn("lookup_order", "Look up an order", {"order": {"$ref": "#/$defs/order_ref"}}, ["order"],
         **{"$defs": {"order_ref": {"type": "object", "properties": {"id": {"type": "integer"},
                                                                     "store": {"type": "string"}},
                                    "required": ["id"], "additionalProperties": False}}})],
     "Where is my order 4521?"),
    ([fn("get_current_user", "Return the signed-in user's profile")], "Who am I signed in as?"),
    ([fn("translate", "Translate text", {"text": {"type": "string"},
                                         "target_language": {"type": "string", "enum": ["fr", "de", "es", "ja"]}},
         ["text", "target_language"])], "Translate 'good morning' into German."),
    ([fn("set_thermostat", "Set the thermostat", {"temperature": {"type": "number", "minimum": 10, "maximum": 30},
                                                  "room": {"type": "string"}}, ["temperature"])],
     "Make the living room 21 degrees."),
    ([fn("book_flight", "Book a flight",
         {"origin": {"type": "string"}, "destination": {"type": "string"},
          "date": {"type": "string", "format": "date"},
          "passengers": {"type": "object", "properties": {"adults": {"type": "integer"},
                                                          "children": {"type": "integer"}},
                         "required": ["adults"]}},
         ["origin", "destination", "date"])], "Book a flight from Paris to Rome on 2025-05-01 for two adults."),
    ([fn("run_sql", "Run a read-only SQL query", {"query": {"type": "string"}}, ["query"]),
      fn("list_tables", "List the database tables")], "How many rows does the users table have?"),
    ([fn("get_directions", "Directions between two places",
         {"from": {"type": "string"}, "to": {"type": "string"},
          "mode": {"type": "string", "enum": ["driving", "walking", "transit"]}}, ["from", "to"])],
     "How do I walk from the Louvre to Notre-Dame?"),
    ([fn("rate_movie", "Rate a movie", {"title": {"type": "string"},
                                        "stars": {"type": "integer", "minimum": 1, "maximum": 5}},
         ["title", "stars"])], "Give Inception five stars."),
    ([fn("tag_photo", "Tag people in a photo", {"photo_id": {"type": "string"},
                                                "people": {"type": "array", "items": {"type": "string"},
                                                           "minItems": 1}}, ["photo_id", "people"])],
     "Tag Alice and Bob in photo p-77."),
    ([fn("get_weather_forecast", "Forecast for the next days",
         {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}}, ["city", "days"]),
      WEATHER, TIME], "Will it rain in London in the next three days?"),
    ([fn("set_reminder", "Set a reminder", {"text": {"type": "string"},
                                            "when": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
         ["text", "when"])], "Remind me to call mom tomorrow."),
    ([fn("toggle_light", "Turn a light on or off", {"room": {"type": "string"}, "on": {"type": "boolean"}},
         ["room", "on"])], "Turn off the kitchen light."),
]
