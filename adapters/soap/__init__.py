"""The SOAP adapter: WSDL-driven outbound calls with zeep, and inbound SOAP endpoints."""
