"""Convert temperatures between Celsius and Fahrenheit."""


def to_fahrenheit(celsius: float) -> float:
    """Degrees Celsius as degrees Fahrenheit."""
    return celsius * 9 / 5 + 32


def to_celsius(fahrenheit: float) -> float:
    """Degrees Fahrenheit as degrees Celsius."""
    return (fahrenheit - 32) * 5 / 9
