"""Protocol adapters (REST, SOAP, and third-party ones), each registered through an entry point."""
